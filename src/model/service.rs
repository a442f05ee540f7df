//! One model for every stream of a process: the weights live once, on one thread (the
//! only thread that runs the model, so streams never oversubscribe the cores or the
//! GPU), and serve requests from any thread through cloneable [`ModelClient`]s.
//!
//! Dynamic batching: query requests (prompts and tracked objects, each with its chip's
//! cached features) that are waiting together go through the query branch, the fusion
//! and the head as one batch, whichever streams and chips they come from, up to
//! [`BatchPolicy::max_batch`] queries. With `max_wait_ms` 0 (the default) the service
//! never waits for company: a batch is what queued up while the previous one ran, so a
//! lone request pays nothing. A positive `max_wait_ms` holds the first request of a batch
//! up to that long for more (throughput on a busy GPU, at that much latency).
//! Satellite-chip encodings run alone, in arrival order with the query batches.
//!
//! A request that fails (bad input, a libtorch error, even a panic inside libtorch)
//! fails alone; the service keeps serving.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind, Tensor};

use super::{decode_with_prior, Detection, ModelConfig, ModelError, RefFeatures, Result, Smgeo, Trace};

/// How query requests are batched (TOML `[localiser]` `batch_max`, `batch_wait_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BatchPolicy {
    /// Most queries in one model call (a request larger than this runs alone).
    pub max_batch: usize,
    /// Longest a batch's first request waits for more, milliseconds (0: never waits).
    pub max_wait_ms: f64,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy { max_batch: 8, max_wait_ms: 0.0 }
    }
}

/// Counters of a running service.
#[derive(Debug, Default)]
pub struct ServiceStats {
    pub batches: AtomicU64,
    pub queries: AtomicU64,
    pub references: AtomicU64,
    pub largest_batch: AtomicU64,
    pub failures: AtomicU64,
}

/// A snapshot of [`ServiceStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ServiceCounts {
    pub batches: u64,
    pub queries: u64,
    pub references: u64,
    pub largest_batch: u64,
    pub failures: u64,
}

type Reply<T> = SyncSender<std::result::Result<T, String>>;

enum Job {
    Reference { sat: Tensor, reply: Reply<RefFeatures> },
    Localise(Query),
}

/// Handle that starts the service; hand out [`ModelClient`]s with [`ModelService::client`].
/// The service thread ends when the service and every client are gone.
pub struct ModelService {
    client: ModelClient,
}

/// A cheap, cloneable way to use the shared model from any thread.
#[derive(Clone)]
pub struct ModelClient {
    tx: Sender<Job>,
    cfg: Arc<ModelConfig>,
    dev: Device,
    kind: Kind,
    stats: Arc<ServiceStats>,
}

impl ModelService {
    /// Move `model` (built in `vs`, weights loaded, precision set) onto its own thread.
    pub fn start(vs: VarStore, model: Smgeo, policy: BatchPolicy) -> Result<Self> {
        if policy.max_batch == 0 || !(policy.max_wait_ms.is_finite() && policy.max_wait_ms >= 0.0) {
            return Err(ModelError::Config(format!(
                "batching: max_batch must be ≥ 1 and max_wait_ms ≥ 0, got {policy:?}"
            )));
        }
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(ServiceStats::default());
        let client = ModelClient {
            tx,
            cfg: Arc::new(model.cfg.clone()),
            dev: vs.device(),
            kind: model.kind(),
            stats: stats.clone(),
        };
        std::thread::Builder::new()
            .name("model".into())
            .spawn(move || serve(vs, model, rx, policy, &stats))
            .map_err(|e| ModelError::Io(format!("starting the model thread: {e}")))?;
        Ok(ModelService { client })
    }

    pub fn client(&self) -> ModelClient {
        self.client.clone()
    }
}

impl ModelClient {
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> Device {
        self.dev
    }

    /// The weights' kind (float32, bf16, f16).
    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn counts(&self) -> ServiceCounts {
        let s = &self.stats;
        ServiceCounts {
            batches: s.batches.load(Ordering::Relaxed),
            queries: s.queries.load(Ordering::Relaxed),
            references: s.references.load(Ordering::Relaxed),
            largest_batch: s.largest_batch.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
        }
    }

    fn call<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx.send(job(reply)).map_err(|_| ModelError::Io("the model service has stopped".into()))?;
        rx.recv().map_err(|_| ModelError::Io("the model service has stopped".into()))?.map_err(ModelError::Io)
    }

    /// Satellite features of a chip `(1, 3, H, W)`, without the MoE routing records
    /// (inference does not need them; the cache holds less).
    pub fn encode_reference(&self, sat: &Tensor) -> Result<RefFeatures> {
        self.call(|reply| Job::Reference { sat: sat.shallow_clone(), reply })
    }

    /// Detections of `queries` `(B, 4, Hq, Wq)` against one chip's features; may be
    /// batched with other clients' requests.
    pub fn localise(&self, queries: &Tensor, r: &RefFeatures) -> Result<Vec<Detection>> {
        self.localise_with_prior(queries, r, None)
    }

    /// [`ModelClient::localise`] with a log-prior over the heatmap cells per query
    /// (`(B, 1, Hf, Wf)`, see [`super::head::decode_with_prior`]).
    pub fn localise_with_prior(
        &self,
        queries: &Tensor,
        r: &RefFeatures,
        log_prior: Option<&Tensor>,
    ) -> Result<Vec<Detection>> {
        if r.tokens.size().first() != Some(&1) {
            return Err(ModelError::Input(format!("one chip per request, got features {:?}", r.tokens.size())));
        }
        if let Some(p) = log_prior {
            let t = r.tokens.size();
            let want = [queries.size().first().copied().unwrap_or(0), 1, t[1], t[2]];
            if p.size() != want {
                return Err(ModelError::Input(format!("log prior {:?}, want {want:?}", p.size())));
            }
        }
        self.call(|reply| {
            Job::Localise(Query {
                queries: queries.shallow_clone(),
                ref_tokens: r.tokens.shallow_clone(),
                img_hw: r.img_hw,
                prior: log_prior.map(|p| p.to_kind(Kind::Float).to_device(tch::Device::Cpu)),
                reply,
            })
        })
    }
}

/// Run `f`, turning an error or a panic into a message.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> std::result::Result<T, String> {
    match catch_unwind(AssertUnwindSafe(|| tch::no_grad(f))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(format!("{what}: libtorch failed: {msg}"))
        }
    }
}

struct Query {
    queries: Tensor,
    ref_tokens: Tensor,
    img_hw: (i64, i64),
    /// Log-prior over the cells (n, 1, Hf, Wf), float32 on the CPU.
    prior: Option<Tensor>,
    reply: Reply<Vec<Detection>>,
}

impl Query {
    fn n(&self) -> usize {
        self.queries.size().first().copied().unwrap_or(0).max(0) as usize
    }

    /// Can share a model call with `o` (same input and feature shapes).
    fn fits(&self, o: &Query) -> bool {
        self.img_hw == o.img_hw
            && self.ref_tokens.size() == o.ref_tokens.size()
            && self.queries.size()[1..] == o.queries.size()[1..]
    }
}

fn serve(_vs: VarStore, model: Smgeo, rx: Receiver<Job>, policy: BatchPolicy, stats: &ServiceStats) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    let wait = Duration::from_secs_f64(policy.max_wait_ms / 1e3);
    loop {
        let job = match pending.pop_front() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return, // every client is gone
            },
        };
        match job {
            Job::Reference { sat, reply } => {
                stats.references.fetch_add(1, Ordering::Relaxed);
                let r = guarded("satellite branch", || {
                    let mut f =
                        model.encode_reference(&super::upload(&sat, model.device()), false, &mut Trace::off())?;
                    f.moe_calls.clear();
                    Ok(f)
                });
                if r.is_err() {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                }
                let _ = reply.send(r);
            }
            Job::Localise(first) => {
                let mut batch = vec![first];
                let mut n = batch[0].n();
                let deadline = Instant::now() + wait;
                while n < policy.max_batch {
                    let next = match pending.pop_front() {
                        Some(j) => Some(j),
                        None => match rx.try_recv() {
                            Ok(j) => Some(j),
                            Err(_) => {
                                let now = Instant::now();
                                if now >= deadline {
                                    None
                                } else {
                                    match rx.recv_timeout(deadline - now) {
                                        Ok(j) => Some(j),
                                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
                                    }
                                }
                            }
                        },
                    };
                    match next {
                        Some(Job::Localise(q)) if n + q.n() <= policy.max_batch && batch[0].fits(&q) => {
                            n += q.n();
                            batch.push(q);
                        }
                        Some(other) => {
                            pending.push_front(other);
                            break;
                        }
                        None => break,
                    }
                }
                run_batch(&model, batch, stats);
            }
        }
    }
}

/// Detections for every query of `batch`, in order, from one model call.
fn run_model(model: &Smgeo, batch: &[Query]) -> std::result::Result<Vec<Detection>, String> {
    let total: usize = batch.iter().map(Query::n).sum();
    let dev = model.device();
    let dets = guarded("query branch", || {
        let q = Tensor::cat(&batch.iter().map(|b| super::upload(&b.queries, dev)).collect::<Vec<_>>(), 0);
        // One chip for all: broadcast it; else each query's own chip, gathered.
        let tokens = if batch.len() == 1 {
            batch[0].ref_tokens.to_device(dev)
        } else {
            let per: Vec<Tensor> =
                batch.iter().map(|b| b.ref_tokens.to_device(dev).expand([b.n() as i64, -1, -1, -1], false)).collect();
            Tensor::cat(&per, 0)
        };
        let r = RefFeatures { tokens, moe_calls: Vec::new(), img_hw: batch[0].img_hw };
        let qf = model.encode_query(&q, false, &mut Trace::off())?;
        let o = model.localise(qf, &r, false, &mut Trace::off())?;
        // Queries without a prior get a flat one (zeros) when others in the batch have one.
        let prior = batch.iter().any(|b| b.prior.is_some()).then(|| {
            let (_, _, hf, wf) = o.heatmap.size4().expect("(B, 1, Hf, Wf)");
            let per: Vec<Tensor> = batch
                .iter()
                .map(|b| {
                    b.prior
                        .as_ref()
                        .map(Tensor::shallow_clone)
                        .unwrap_or_else(|| Tensor::zeros([b.n() as i64, 1, hf, wf], (Kind::Float, tch::Device::Cpu)))
                })
                .collect();
            Tensor::cat(&per, 0)
        });
        Ok(decode_with_prior(&o.heatmap, &o.bbox, r.img_hw, prior.as_ref()))
    })?;
    if dets.len() != total {
        return Err(format!("query branch: {} detections for {total} queries", dets.len()));
    }
    Ok(dets)
}

/// Run `batch` as one model call and answer each request with its detections. When the
/// call fails and it held several requests, each is retried alone so that one bad
/// request fails alone.
fn run_batch(model: &Smgeo, batch: Vec<Query>, stats: &ServiceStats) {
    let total: usize = batch.iter().map(Query::n).sum();
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.queries.fetch_add(total as u64, Ordering::Relaxed);
    stats.largest_batch.fetch_max(total as u64, Ordering::Relaxed);
    match run_model(model, &batch) {
        Ok(dets) => {
            let mut it = dets.into_iter();
            for b in batch {
                let k = b.n();
                let _ = b.reply.send(Ok(it.by_ref().take(k).collect()));
            }
        }
        Err(msg) if batch.len() == 1 => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            batch.into_iter().for_each(|b| drop(b.reply.send(Err(msg.clone()))));
        }
        Err(_) => {
            for b in batch {
                let r = run_model(model, std::slice::from_ref(&b));
                if r.is_err() {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                }
                let _ = b.reply.send(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decode;
    use crate::model::tests::{tiny, wave};

    /// Deterministic inputs without the global generator (tests run in parallel).
    fn inputs(seed: i64) -> (Tensor, Tensor) {
        (wave(&[2, 4, 64, 64], 0.37 + 0.011 * seed as f64), wave(&[1, 3, 128, 128], 0.53 + 0.007 * seed as f64))
    }

    /// What the model says for (queries, chip) in one direct call.
    fn direct(m: &Smgeo, q: &Tensor, s: &Tensor) -> Vec<Detection> {
        tch::no_grad(|| {
            let o = m.forward_t(q, &s.expand([q.size()[0], -1, -1, -1], false), false, &mut Trace::off()).unwrap();
            decode(&o.heatmap, &o.bbox, (s.size()[2], s.size()[3]))
        })
    }

    fn same(a: &[Detection], b: &[Detection]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.index, y.index);
            for k in 0..4 {
                assert!((x.box_raw[k] - y.box_raw[k]).abs() < 1e-3, "{:?} vs {:?}", x.box_raw, y.box_raw);
            }
        }
    }

    #[test]
    fn requests_from_several_threads_batch_across_chips_and_match_direct_calls() {
        let (vs, m) = tiny();
        let (mut vs2, m2) = tiny();
        vs2.copy(&vs).unwrap(); // the same weights, for the direct reference
        let svc = ModelService::start(vs, m, BatchPolicy { max_batch: 8, max_wait_ms: 300.0 }).unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(3));
        let handles: Vec<_> = (0..3)
            .map(|k| {
                let c = svc.client();
                let b = barrier.clone();
                std::thread::spawn(move || {
                    let (q, s) = inputs(10 + k);
                    let r = c.encode_reference(&s).unwrap();
                    assert!(r.moe_calls.is_empty());
                    b.wait();
                    (q.shallow_clone(), s.shallow_clone(), c.localise(&q, &r).unwrap())
                })
            })
            .collect();
        let got: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for (q, s, dets) in &got {
            same(dets, &direct(&m2, q, s));
        }
        let n = svc.client().counts();
        assert_eq!((n.queries, n.references, n.failures), (6, 3, 0));
        assert!(n.largest_batch >= 4 && n.batches < 3, "no batching across threads: {n:?}");
    }

    #[test]
    fn max_batch_is_respected_and_a_lone_request_does_not_wait() {
        let (vs, m) = tiny();
        let svc = ModelService::start(vs, m, BatchPolicy { max_batch: 3, max_wait_ms: 0.0 }).unwrap();
        let c = svc.client();
        let (q, s) = inputs(1);
        let r = c.encode_reference(&s).unwrap();
        for _ in 0..3 {
            assert_eq!(c.localise(&q, &r).unwrap().len(), 2);
        }
        // A request larger than max_batch still runs (alone).
        let q5 = Tensor::cat(&[&q, &q, &q.narrow(0, 0, 1)], 0);
        assert_eq!(c.localise(&q5, &r).unwrap().len(), 5);
        let n = c.counts();
        assert_eq!((n.batches, n.queries, n.largest_batch), (4, 11, 5));
        assert!(ModelService::start(tiny().0, tiny().1, BatchPolicy { max_batch: 0, max_wait_ms: 0.0 }).is_err());
    }

    #[test]
    fn a_bad_request_fails_alone_and_the_service_keeps_serving() {
        let (vs, m) = tiny();
        let svc = ModelService::start(vs, m, BatchPolicy { max_batch: 8, max_wait_ms: 200.0 }).unwrap();
        let (q, s) = inputs(2);
        let c = svc.client();
        let r = c.encode_reference(&s).unwrap();
        // wrong channel count, batched together with a good request
        let bad = q.narrow(1, 0, 3);
        let (c1, c2) = (c.clone(), c.clone());
        let rb = r.tokens.shallow_clone();
        let hw = r.img_hw;
        let t = std::thread::spawn(move || {
            let r = RefFeatures { tokens: rb, moe_calls: vec![], img_hw: hw };
            c1.localise(&bad, &r)
        });
        let good = c2.localise(&q, &r);
        let bad = t.join().unwrap();
        assert!(bad.unwrap_err().to_string().contains("4 channels"));
        assert_eq!(good.unwrap().len(), 2);
        assert!(c.encode_reference(&Tensor::zeros([1, 3, 30, 30], (Kind::Float, Device::Cpu))).is_err());
        assert_eq!(c.localise(&q, &r).unwrap().len(), 2);
        assert!(c.counts().failures >= 2);
    }
}

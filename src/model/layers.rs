//! Small building blocks with PyTorch parameter names (`weight`, `bias`,
//! `running_mean`, …) so state-dict keys fall out of the module paths.
//!
//! Every layer computes in the kind of its input: parameters of another kind are cast
//! on use (a no-op when the kinds agree), so float32 master weights can run a bf16
//! forward and receive float32 gradients — what `torch.autocast` does (see
//! [`crate::model::Smgeo::set_compute_kind`]).

/// `t` in kind `k`: the same tensor when it already is.
pub fn as_kind(t: &Tensor, k: Kind) -> Tensor {
    if t.kind() == k {
        t.shallow_clone()
    } else {
        t.to_kind(k)
    }
}

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

/// Truncated-normal-like init used by Swin/timm (std 0.02). libtorch's plain normal
/// is close enough for training from scratch; imported weights replace it anyway.
pub const TRUNC_STD: f64 = 0.02;

#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// `weight` (out, in) ~ N(0, 0.02²), bias zero.
    pub fn new(vs: &nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> Self {
        Self::with_init(vs, in_dim, out_dim, bias, Init::Randn { mean: 0.0, stdev: TRUNC_STD })
    }

    pub fn with_init(vs: &nn::Path, in_dim: i64, out_dim: i64, bias: bool, init: Init) -> Self {
        let weight = vs.var("weight", &[out_dim, in_dim], init);
        let bias = bias.then(|| vs.var("bias", &[out_dim], Init::Const(0.0)));
        Linear { weight, bias }
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let k = xs.kind();
        xs.linear(&as_kind(&self.weight, k), self.bias.as_ref().map(|b| as_kind(b, k)).as_ref())
    }

    /// The same in float32 whatever the kind of the input and the parameters.
    pub fn forward_f32(&self, xs: &Tensor) -> Tensor {
        self.forward(&as_kind(xs, Kind::Float))
    }
}

/// Xavier-uniform (Glorot) init for a (out, in) matrix.
pub fn xavier_uniform(in_dim: i64, out_dim: i64) -> Init {
    let a = (6.0 / (in_dim + out_dim) as f64).sqrt();
    Init::Uniform { lo: -a, up: a }
}

#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    dim: i64,
}

impl LayerNorm {
    pub fn new(vs: &nn::Path, dim: i64) -> Self {
        LayerNorm {
            weight: vs.var("weight", &[dim], Init::Const(1.0)),
            bias: vs.var("bias", &[dim], Init::Const(0.0)),
            dim,
        }
    }

    /// Normalises the last dimension (eps 1e-5, as PyTorch's default).
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let k = xs.kind();
        xs.layer_norm([self.dim], Some(&as_kind(&self.weight, k)), Some(&as_kind(&self.bias, k)), 1e-5, true)
    }

    /// The same in float32 whatever the kind of the input and the parameters (a no-op
    /// cast when both are float32 already).
    pub fn forward_f32(&self, xs: &Tensor) -> Tensor {
        self.forward(&as_kind(xs, Kind::Float))
    }
}

#[derive(Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Tensor,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    /// Kaiming-uniform weights (PyTorch's default for conv), zero bias.
    pub fn new(vs: &nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> Self {
        let fan_in = (c_in * k * k) as f64;
        let bound = 1.0 / fan_in.sqrt();
        Conv2d {
            weight: vs.var("weight", &[c_out, c_in, k, k], Init::Uniform { lo: -bound, up: bound }),
            bias: vs.var("bias", &[c_out], Init::Uniform { lo: -bound, up: bound }),
            stride,
            padding,
        }
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let k = xs.kind();
        xs.conv2d(&as_kind(&self.weight, k), Some(&as_kind(&self.bias, k)), [self.stride], [self.padding], [1], 1)
    }

    /// The same in float32 whatever the kind of the input and the parameters.
    pub fn forward_f32(&self, xs: &Tensor) -> Tensor {
        self.forward(&as_kind(xs, Kind::Float))
    }
}

/// BatchNorm2d with running statistics (eps 1e-5, momentum 0.1). PyTorch's
/// `num_batches_tracked` counter is not kept (momentum is fixed, so it is unused).
#[derive(Debug)]
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
}

impl BatchNorm2d {
    pub fn new(vs: &nn::Path, dim: i64) -> Self {
        BatchNorm2d {
            weight: vs.var("weight", &[dim], Init::Const(1.0)),
            bias: vs.var("bias", &[dim], Init::Const(0.0)),
            running_mean: vs.zeros_no_train("running_mean", &[dim]),
            running_var: vs.ones_no_train("running_var", &[dim]),
        }
    }

    /// `train`: batch statistics, running stats updated in place; else running stats.
    /// Computes in the parameters' kind (the running statistics are updated in place, so
    /// they cannot be cast copies) and returns the input's kind.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let y = Tensor::batch_norm(
            &as_kind(xs, self.weight.kind()),
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            0.1,
            1e-5,
            false,
        );
        as_kind(&y, xs.kind())
    }
}

/// Stochastic depth: drops the whole residual branch per sample with probability `p`
/// in training, scaling kept samples by 1/(1−p). Identity in eval.
pub fn drop_path(xs: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return xs.shallow_clone();
    }
    let b = xs.size()[0];
    let mut shape = vec![1i64; xs.dim()];
    shape[0] = b;
    let keep = Tensor::empty(shape.as_slice(), (xs.kind(), xs.device())).bernoulli_float_(1.0 - p);
    xs * keep / (1.0 - p)
}

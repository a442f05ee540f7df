//! Small building blocks with PyTorch parameter names (`weight`, `bias`,
//! `running_mean`, …) so state-dict keys fall out of the module paths.

use tch::nn::{self, Init};
use tch::Tensor;

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
        xs.linear(&self.weight, self.bias.as_ref())
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
        xs.layer_norm([self.dim], Some(&self.weight), Some(&self.bias), 1e-5, true)
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
        xs.conv2d(&self.weight, Some(&self.bias), [self.stride], [self.padding], [1], 1)
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
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        Tensor::batch_norm(
            xs,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            0.1,
            1e-5,
            false,
        )
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

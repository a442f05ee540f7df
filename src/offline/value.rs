//! [`PyValue`]: the plain Python data model read from and written to pickles.

/// A plain Python value.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    None,
    Bool(bool),
    /// An int that fits in 64 bits.
    Int(i64),
    /// A larger int, as little-endian two's-complement bytes (as in `LONG1`).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<PyValue>),
    Tuple(Vec<PyValue>),
    /// Key/value pairs in pickle order.
    Dict(Vec<(PyValue, PyValue)>),
}

impl PyValue {
    /// Python-style type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            PyValue::None => "NoneType",
            PyValue::Bool(_) => "bool",
            PyValue::Int(_) | PyValue::BigInt(_) => "int",
            PyValue::Float(_) => "float",
            PyValue::Str(_) => "str",
            PyValue::Bytes(_) => "bytes",
            PyValue::List(_) => "list",
            PyValue::Tuple(_) => "tuple",
            PyValue::Dict(_) => "dict",
        }
    }

    /// The value as an `i64` if it is an int that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            PyValue::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// The value as an `i128` if it is an int of at most 16 bytes.
    pub fn as_i128(&self) -> Option<i128> {
        match self {
            PyValue::Int(v) => Some(i128::from(*v)),
            PyValue::BigInt(b) => le_bytes_to_i128(b),
            _ => None,
        }
    }

    /// The value as `f64` if it is an int (64-bit) or a float. Bools are not numbers here.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            PyValue::Int(v) => Some(*v as f64),
            PyValue::Float(v) => Some(*v),
            _ => None,
        }
    }

    /// The string, if the value is a str.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PyValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items of a list or tuple.
    pub fn as_seq(&self) -> Option<&[PyValue]> {
        match self {
            PyValue::List(v) | PyValue::Tuple(v) => Some(v),
            _ => None,
        }
    }

    /// Look up a str key in a dict (first match).
    pub fn dict_get(&self, key: &str) -> Option<&PyValue> {
        match self {
            PyValue::Dict(items) => items.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }
}

pub(super) fn le_bytes_to_i128(b: &[u8]) -> Option<i128> {
    if b.len() > 16 {
        return None;
    }
    let fill = if b.last().is_some_and(|x| x & 0x80 != 0) { 0xff } else { 0 };
    let mut buf = [fill; 16];
    buf[..b.len()].copy_from_slice(b);
    Some(i128::from_le_bytes(buf))
}

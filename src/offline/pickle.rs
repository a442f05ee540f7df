//! A bounded pickle VM for plain Python data, and a protocol-2 pickler.
//!
//! Reading supports the opcodes that `pickle` (protocols 2 to 4, as used by
//! `torch.save`) emits for `None`, bool, int, float, str, bytes, list, tuple and dict,
//! plus the memo opcodes. The only global accepted is `collections.OrderedDict`, and
//! only called with no arguments (`REDUCE` with an empty tuple), which yields a dict.
//! Anything else (other globals, `BUILD`, `NEWOBJ`, persistent ids as used for tensor
//! storages, …) is rejected: the input is untrusted and nothing is ever executed.
//!
//! Objects live in an arena while the VM runs so that memo references share identity
//! as in Python (a list memoised and then appended to is seen with its items by a
//! later `BINGET`). The final value is materialised with a bound on nesting depth and
//! on the total number of nodes, which also defuses cyclic and exponentially shared
//! structures.
//!
//! Reference: Python's `Lib/pickletools.py` opcode table (facts only).

use std::collections::HashMap;

use super::value::{le_bytes_to_i128, PyValue};
use super::{OfflineError, Result};

/// Bounds applied while unpickling.
#[derive(Debug, Clone, Copy)]
pub struct PickleLimits {
    /// Maximum nesting depth of containers.
    pub max_depth: usize,
    /// Maximum number of values in the materialised result.
    pub max_nodes: usize,
}

impl Default for PickleLimits {
    fn default() -> Self {
        // CVOGL records nest 3 deep; a split holds tens of thousands of records with
        // ~20 values each. These bounds leave wide room and stop hostile inputs.
        PickleLimits { max_depth: 64, max_nodes: 20_000_000 }
    }
}

/// Unpickle one value from the start of `data` with default limits.
/// Returns the value and the number of bytes consumed (up to and including `STOP`).
pub fn unpickle(data: &[u8]) -> Result<(PyValue, usize)> {
    unpickle_with(data, PickleLimits::default())
}

/// Unpickle one value from the start of `data` with the given limits.
pub fn unpickle_with(data: &[u8], limits: PickleLimits) -> Result<(PyValue, usize)> {
    let mut vm = Vm { data, pos: 0, arena: Vec::new(), stack: Vec::new(), memo: HashMap::new() };
    let root = vm.run()?;
    let mut nodes = 0usize;
    let value = vm.materialise(root, 0, &mut nodes, &limits)?;
    Ok((value, vm.pos))
}

/// Arena object: like [`PyValue`] but containers hold arena indices.
#[derive(Debug)]
enum Obj {
    Value(PyValue),
    List(Vec<usize>),
    Tuple(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    /// The allowed global `collections.OrderedDict`, callable with no arguments.
    OrderedDictType,
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Mark,
    Obj(usize),
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    arena: Vec<Obj>,
    stack: Vec<Slot>,
    memo: HashMap<u32, usize>,
}

impl<'a> Vm<'a> {
    fn err(&self, offset: usize, reason: impl Into<String>) -> OfflineError {
        OfflineError::Pickle { offset, reason: reason.into() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(self.err(self.pos, format!("truncated: need {n} more bytes")));
        };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn take_arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// Read a length prefix of `N` little-endian bytes and then that many bytes.
    fn take_counted<const N: usize>(&mut self) -> Result<&'a [u8]> {
        let raw = self.take_arr::<N>()?;
        let mut buf = [0u8; 8];
        buf[..N].copy_from_slice(&raw);
        let n = u64::from_le_bytes(buf);
        let n = usize::try_from(n).map_err(|_| self.err(self.pos, "length overflows usize"))?;
        self.take(n)
    }

    fn take_line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(nl) = rest.iter().take(256).position(|&b| b == b'\n') else {
            return Err(self.err(self.pos, "GLOBAL name line missing or over 256 bytes"));
        };
        let line = &rest[..nl];
        self.pos += nl + 1;
        std::str::from_utf8(line).map_err(|_| self.err(self.pos, "GLOBAL name is not UTF-8"))
    }

    fn push_obj(&mut self, obj: Obj) {
        self.arena.push(obj);
        self.stack.push(Slot::Obj(self.arena.len() - 1));
    }

    fn push_val(&mut self, v: PyValue) {
        self.push_obj(Obj::Value(v));
    }

    fn pop(&mut self, at: usize) -> Result<usize> {
        match self.stack.pop() {
            Some(Slot::Obj(i)) => Ok(i),
            Some(Slot::Mark) => Err(self.err(at, "unexpected MARK on the stack")),
            None => Err(self.err(at, "stack underflow")),
        }
    }

    fn top(&self, at: usize) -> Result<usize> {
        match self.stack.last() {
            Some(Slot::Obj(i)) => Ok(*i),
            _ => Err(self.err(at, "expected an object on top of the stack")),
        }
    }

    /// Pop everything above the topmost MARK (and the MARK itself).
    fn pop_mark(&mut self, at: usize) -> Result<Vec<usize>> {
        let Some(m) = self.stack.iter().rposition(|s| matches!(s, Slot::Mark)) else {
            return Err(self.err(at, "no MARK on the stack"));
        };
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        // No MARK lies above the topmost one, so filter_map drops nothing.
        Ok(items
            .into_iter()
            .filter_map(|s| match s {
                Slot::Obj(i) => Some(i),
                Slot::Mark => None,
            })
            .collect())
    }

    fn run(&mut self) -> Result<usize> {
        loop {
            let at = self.pos;
            let op = self.take_arr::<1>()?[0];
            if op == b'.' {
                let root = self.pop(at)?;
                return Ok(root);
            }
            self.step(op, at)?;
        }
    }

    fn step(&mut self, op: u8, at: usize) -> Result<()> {
        match op {
            0x80 => {
                let proto = self.take_arr::<1>()?[0];
                if !(2..=5).contains(&proto) {
                    return Err(self.err(at, format!("unsupported protocol {proto}")));
                }
            }
            0x95 => {
                self.take_arr::<8>()?; // FRAME: frame contents follow inline
            }
            b'(' => self.stack.push(Slot::Mark),
            b'0' => {
                self.stack.pop().ok_or_else(|| self.err(at, "POP on empty stack"))?;
            }
            b'1' => {
                self.pop_mark(at)?;
            }
            b'2' => {
                let i = self.top(at)?;
                self.stack.push(Slot::Obj(i));
            }
            _ => return self.step_value(op, at),
        }
        Ok(())
    }

    fn step_value(&mut self, op: u8, at: usize) -> Result<()> {
        match op {
            b'N' => self.push_val(PyValue::None),
            0x88 => self.push_val(PyValue::Bool(true)),
            0x89 => self.push_val(PyValue::Bool(false)),
            b'J' => {
                let v = i32::from_le_bytes(self.take_arr::<4>()?);
                self.push_val(PyValue::Int(i64::from(v)));
            }
            b'K' => {
                let v = self.take_arr::<1>()?[0];
                self.push_val(PyValue::Int(i64::from(v)));
            }
            b'M' => {
                let v = u16::from_le_bytes(self.take_arr::<2>()?);
                self.push_val(PyValue::Int(i64::from(v)));
            }
            0x8a => {
                let b = self.take_counted::<1>()?;
                self.push_val(long_value(b));
            }
            0x8b => {
                let b = self.take_counted::<4>()?;
                self.push_val(long_value(b));
            }
            b'G' => {
                let v = f64::from_be_bytes(self.take_arr::<8>()?);
                self.push_val(PyValue::Float(v));
            }
            0x8c => self.push_str::<1>(at)?,
            b'X' => self.push_str::<4>(at)?,
            0x8d => self.push_str::<8>(at)?,
            b'C' => self.push_bytes::<1>()?,
            b'B' => self.push_bytes::<4>()?,
            0x8e => self.push_bytes::<8>()?,
            _ => return self.step_container(op, at),
        }
        Ok(())
    }

    fn push_str<const N: usize>(&mut self, at: usize) -> Result<()> {
        let b = self.take_counted::<N>()?;
        let s = std::str::from_utf8(b).map_err(|_| self.err(at, "string is not valid UTF-8"))?;
        self.push_val(PyValue::Str(s.to_owned()));
        Ok(())
    }

    fn push_bytes<const N: usize>(&mut self) -> Result<()> {
        let b = self.take_counted::<N>()?;
        self.push_val(PyValue::Bytes(b.to_vec()));
        Ok(())
    }

    fn step_container(&mut self, op: u8, at: usize) -> Result<()> {
        match op {
            b']' => self.push_obj(Obj::List(Vec::new())),
            b'l' => {
                let items = self.pop_mark(at)?;
                self.push_obj(Obj::List(items));
            }
            b')' => self.push_obj(Obj::Tuple(Vec::new())),
            b't' => {
                let items = self.pop_mark(at)?;
                self.push_obj(Obj::Tuple(items));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = vec![0; n];
                for slot in items.iter_mut().rev() {
                    *slot = self.pop(at)?;
                }
                self.push_obj(Obj::Tuple(items));
            }
            b'}' => self.push_obj(Obj::Dict(Vec::new())),
            b'd' => {
                let items = self.pop_mark(at)?;
                let pairs = pairs_of(&items).ok_or_else(|| self.err(at, "odd item count in DICT"))?;
                self.push_obj(Obj::Dict(pairs));
            }
            b'a' => {
                let v = self.pop(at)?;
                self.extend_list(at, vec![v])?;
            }
            b'e' => {
                let items = self.pop_mark(at)?;
                self.extend_list(at, items)?;
            }
            b's' => {
                let v = self.pop(at)?;
                let k = self.pop(at)?;
                self.extend_dict(at, vec![(k, v)])?;
            }
            b'u' => {
                let items = self.pop_mark(at)?;
                let pairs = pairs_of(&items).ok_or_else(|| self.err(at, "odd item count in SETITEMS"))?;
                self.extend_dict(at, pairs)?;
            }
            _ => return self.step_memo(op, at),
        }
        Ok(())
    }

    fn extend_list(&mut self, at: usize, items: Vec<usize>) -> Result<()> {
        let target = self.top(at)?;
        match &mut self.arena[target] {
            Obj::List(v) => {
                v.extend(items);
                Ok(())
            }
            _ => Err(self.err(at, "APPEND(S) target is not a list")),
        }
    }

    fn extend_dict(&mut self, at: usize, pairs: Vec<(usize, usize)>) -> Result<()> {
        let target = self.top(at)?;
        match &mut self.arena[target] {
            Obj::Dict(v) => {
                v.extend(pairs);
                Ok(())
            }
            _ => Err(self.err(at, "SETITEM(S) target is not a dict")),
        }
    }

    fn step_memo(&mut self, op: u8, at: usize) -> Result<()> {
        match op {
            b'q' => {
                let k = u32::from(self.take_arr::<1>()?[0]);
                self.memo_put(at, k)?;
            }
            b'r' => {
                let k = u32::from_le_bytes(self.take_arr::<4>()?);
                self.memo_put(at, k)?;
            }
            0x94 => {
                let k = u32::try_from(self.memo.len()).map_err(|_| self.err(at, "memo index overflow"))?;
                self.memo_put(at, k)?;
            }
            b'h' => {
                let k = u32::from(self.take_arr::<1>()?[0]);
                self.memo_get(at, k)?;
            }
            b'j' => {
                let k = u32::from_le_bytes(self.take_arr::<4>()?);
                self.memo_get(at, k)?;
            }
            _ => return self.step_global(op, at),
        }
        Ok(())
    }

    fn memo_put(&mut self, at: usize, k: u32) -> Result<()> {
        let i = self.top(at)?;
        self.memo.insert(k, i);
        Ok(())
    }

    fn memo_get(&mut self, at: usize, k: u32) -> Result<()> {
        let i = *self.memo.get(&k).ok_or_else(|| self.err(at, format!("memo key {k} not defined")))?;
        self.stack.push(Slot::Obj(i));
        Ok(())
    }

    fn step_global(&mut self, op: u8, at: usize) -> Result<()> {
        match op {
            b'c' => {
                let module = self.take_line()?.to_owned();
                let name = self.take_line()?.to_owned();
                self.push_global(at, module, name)
            }
            0x93 => {
                let name = self.pop(at)?;
                let module = self.pop(at)?;
                let (Some(module), Some(name)) = (self.arena_str(module), self.arena_str(name)) else {
                    return Err(self.err(at, "STACK_GLOBAL operands are not strings"));
                };
                self.push_global(at, module, name)
            }
            b'R' => self.reduce(at),
            _ => Err(OfflineError::UnsupportedOpcode { offset: at, opcode: op, name: opcode_name(op) }),
        }
    }

    fn arena_str(&self, i: usize) -> Option<String> {
        match &self.arena[i] {
            Obj::Value(PyValue::Str(s)) => Some(s.clone()),
            _ => None,
        }
    }

    fn push_global(&mut self, at: usize, module: String, name: String) -> Result<()> {
        if module == "collections" && name == "OrderedDict" {
            self.push_obj(Obj::OrderedDictType);
            Ok(())
        } else {
            Err(OfflineError::UnsupportedGlobal { offset: at, module, name })
        }
    }

    fn reduce(&mut self, at: usize) -> Result<()> {
        let args = self.pop(at)?;
        let func = self.pop(at)?;
        let empty_args = matches!(&self.arena[args], Obj::Tuple(v) if v.is_empty());
        if matches!(self.arena[func], Obj::OrderedDictType) && empty_args {
            self.push_obj(Obj::Dict(Vec::new()));
            Ok(())
        } else {
            Err(self.err(at, "REDUCE is only allowed as OrderedDict()"))
        }
    }

    fn materialise(&self, idx: usize, depth: usize, nodes: &mut usize, limits: &PickleLimits) -> Result<PyValue> {
        *nodes += 1;
        if *nodes > limits.max_nodes {
            return Err(OfflineError::Limit { what: "pickle value count", limit: limits.max_nodes });
        }
        if depth > limits.max_depth {
            return Err(OfflineError::Limit { what: "pickle nesting depth", limit: limits.max_depth });
        }
        let mut sub = |i: usize| self.materialise(i, depth + 1, nodes, limits);
        Ok(match &self.arena[idx] {
            Obj::Value(v) => v.clone(),
            Obj::List(items) => PyValue::List(items.iter().map(|&i| sub(i)).collect::<Result<_>>()?),
            Obj::Tuple(items) => PyValue::Tuple(items.iter().map(|&i| sub(i)).collect::<Result<_>>()?),
            Obj::Dict(pairs) => {
                PyValue::Dict(pairs.iter().map(|&(k, v)| Ok((sub(k)?, sub(v)?))).collect::<Result<_>>()?)
            }
            Obj::OrderedDictType => return Err(self.err(0, "result contains the OrderedDict type itself")),
        })
    }
}

fn pairs_of(items: &[usize]) -> Option<Vec<(usize, usize)>> {
    items.len().is_multiple_of(2).then(|| items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
}

/// Decode a `LONG1`/`LONG4` payload (little-endian two's complement).
fn long_value(b: &[u8]) -> PyValue {
    if b.len() <= 8 {
        // Length 0 encodes 0; le_bytes_to_i128 handles sign extension.
        let v = le_bytes_to_i128(b).unwrap_or(0);
        PyValue::Int(v as i64)
    } else {
        PyValue::BigInt(b.to_vec())
    }
}

fn opcode_name(op: u8) -> &'static str {
    match op {
        b'Q' | b'P' => "persistent id (tensor storage); only plain data is supported",
        b'b' => "BUILD",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        b'o' => "OBJ",
        b'i' => "INST",
        0x82..=0x84 => "EXT",
        0x90 => "EMPTY_SET",
        0x91 => "FROZENSET",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        b'I' | b'L' | b'F' | b'S' | b'V' | b'U' | b'T' => "text-mode (protocol 0/1) value",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_shares_identity_like_python() {
        // Python: x = [7]; pickle.dumps([x, x], 2) memoises x (q1) before it is
        // filled by APPEND, then refers to it again with BINGET 1.
        let data = b"\x80\x02]q\x00(]q\x01K\x07ah\x01e.";
        let (v, _) = unpickle(data).unwrap();
        let inner = PyValue::List(vec![PyValue::Int(7)]);
        assert_eq!(v, PyValue::List(vec![inner.clone(), inner]));
    }

    #[test]
    fn protocol4_opcodes() {
        // pickle.dumps(("ab", b"x", [1.5]), 4)
        let data = b"\x80\x04\x95\x18\x00\x00\x00\x00\x00\x00\x00\x8c\x02ab\x94C\x01x\x94]\x94G?\xf8\x00\x00\x00\x00\x00\x00a\x87\x94.";
        let (v, used) = unpickle(data).unwrap();
        assert_eq!(used, data.len());
        assert_eq!(
            v,
            PyValue::Tuple(vec![
                PyValue::Str("ab".into()),
                PyValue::Bytes(b"x".to_vec()),
                PyValue::List(vec![PyValue::Float(1.5)]),
            ])
        );
    }

    #[test]
    fn rejects_arbitrary_globals_and_reduce() {
        let data = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85R.";
        match unpickle(data) {
            Err(OfflineError::UnsupportedGlobal { module, name, .. }) => {
                assert_eq!((module.as_str(), name.as_str()), ("os", "system"));
            }
            other => panic!("expected UnsupportedGlobal, got {other:?}"),
        }
        // BUILD and persistent ids are rejected too.
        assert!(matches!(unpickle(b"\x80\x02}}b."), Err(OfflineError::UnsupportedOpcode { opcode: b'b', .. })));
        assert!(matches!(
            unpickle(b"\x80\x02X\x01\x00\x00\x00aQ."),
            Err(OfflineError::UnsupportedOpcode { opcode: b'Q', .. })
        ));
    }

    #[test]
    fn ordered_dict_call_is_allowed() {
        // Python: pickle.dumps(collections.OrderedDict(a=1), 2)
        let data = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00aq\x02K\x01s.";
        let (v, _) = unpickle(data).unwrap();
        assert_eq!(v.dict_get("a"), Some(&PyValue::Int(1)));
    }

    #[test]
    fn truncated_and_oversized_lengths_are_errors() {
        assert!(unpickle(b"\x80\x02X\xff\xff\xff\xffab").is_err());
        assert!(unpickle(b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xffab").is_err());
        assert!(unpickle(b"\x80\x02]").is_err());
        assert!(unpickle(b"").is_err());
        assert!(unpickle(b"\x80\x02e.").is_err());
    }

    #[test]
    fn cycles_and_blowups_hit_limits() {
        // l = []; l.append(l)
        let cyclic = b"\x80\x02]q\x00h\x00a.";
        assert!(matches!(unpickle(cyclic), Err(OfflineError::Limit { .. })));
        // Doubling: each level is a 2-tuple of the previous level, 40 levels -> 2^40 nodes.
        let mut data = b"\x80\x02K\x01q\x00".to_vec();
        for _ in 0..40 {
            data.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        data.push(b'.');
        let limits = PickleLimits { max_depth: 64, max_nodes: 1000 };
        assert!(matches!(unpickle_with(&data, limits), Err(OfflineError::Limit { .. })));
    }

    #[test]
    fn big_magic_number_decodes() {
        // torch's legacy magic number 0x1950a86a20f9469cfc6c as LONG1.
        let data = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
        let (v, _) = unpickle(data).unwrap();
        assert_eq!(v.as_i128(), Some(0x1950a86a20f9469cfc6c));
        assert_eq!(PyValue::BigInt(vec![0xff; 9]).as_i128(), Some(-1));
    }
}

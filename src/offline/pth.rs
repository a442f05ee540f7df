//! PyTorch `.pth` containers holding plain Python data (no tensors).
//!
//! Two forms are read, as `torch.save` writes them:
//! - **zip** (default since PyTorch 1.6): a zip archive whose entries all lie under one
//!   folder `<archive>/`, stored uncompressed, with each entry's data aligned to 64 bytes
//!   by a padding extra field (id `FB`). The object is the pickle `<archive>/data.pkl`;
//!   `<archive>/byteorder` (`little`), `<archive>/version` (`3\n`),
//!   `<archive>/.format_version`, `<archive>/.storage_alignment` and
//!   `<archive>/.data/serialization_id` are metadata. Tensor data would live in
//!   `<archive>/data/<key>` and be referenced by persistent ids, which we reject.
//! - **legacy** (`_use_new_zipfile_serialization=False`): consecutive pickles of the
//!   magic number `0x1950a86a20f9469cfc6c`, the protocol version 1001, a `sys_info`
//!   dict, the object, and the list of storage keys (empty without tensors).
//!
//! Files are written in the zip form with the layout facts of a PyTorch 2.11 file
//! (entry order, metadata entries, 64-byte alignment, archive folder `archive`, as
//! `torch.save` uses for file-like targets), so that `torch.load(weights_only=True)`
//! reads them. Output is deterministic: the serialization id is derived from the
//! pickle's bytes, and timestamps are zero as in PyTorch's own files.

use std::path::Path;

use super::pickle::unpickle;
use super::pickle_write::to_pickle;
use super::value::PyValue;
use super::zipfile::{entry_data, read_zip_directory, zip_err, ZipWriter};
use super::{OfflineError, Result};

/// Which container a `.pth` file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PthFormat {
    Zip,
    Legacy,
}

/// Largest file [`read_pth`] accepts (bytes). CVOGL split files are a few MB.
pub const MAX_PTH_BYTES: u64 = 1 << 30;

const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
const LEGACY_PROTOCOL: i64 = 1001;
/// Archive folder name in files we write (`torch.save` uses it for buffers).
const ARCHIVE: &str = "archive";

/// Detect the container form from the first bytes.
pub fn detect_format(bytes: &[u8]) -> Option<PthFormat> {
    if bytes.starts_with(b"PK\x03\x04") {
        Some(PthFormat::Zip)
    } else if bytes.first() == Some(&0x80) {
        Some(PthFormat::Legacy)
    } else {
        None
    }
}

/// Read a `.pth` file holding plain data.
pub fn read_pth(path: &Path) -> Result<PyValue> {
    let io_err = |source| OfflineError::Io { path: path.to_path_buf(), source };
    let len = std::fs::metadata(path).map_err(io_err)?.len();
    if len > MAX_PTH_BYTES {
        return Err(
            OfflineError::NotPth { reason: format!("file is {len} bytes, limit {MAX_PTH_BYTES}") }.in_file(path)
        );
    }
    let bytes = std::fs::read(path).map_err(io_err)?;
    read_pth_bytes(&bytes).map(|(v, _)| v).map_err(|e| e.in_file(path))
}

/// Decode `.pth` bytes in either form; returns the value and the form found.
pub fn read_pth_bytes(bytes: &[u8]) -> Result<(PyValue, PthFormat)> {
    match detect_format(bytes) {
        Some(PthFormat::Zip) => Ok((read_zip_form(bytes)?, PthFormat::Zip)),
        Some(PthFormat::Legacy) => Ok((read_legacy_form(bytes)?, PthFormat::Legacy)),
        None => Err(OfflineError::NotPth {
            reason: "neither a zip archive (PK\\x03\\x04) nor a pickle stream (0x80)".into(),
        }),
    }
}

/// Write `value` as a zip-form `.pth` file. The file is written next to `path` and
/// renamed into place, so readers never see a partial file.
pub fn write_pth(path: &Path, value: &PyValue) -> Result<()> {
    let bytes = pth_bytes(value)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    let io_err = |p: &Path, source| OfflineError::Io { path: p.to_path_buf(), source };
    std::fs::write(&tmp, &bytes).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// Encode `value` as the bytes of a zip-form `.pth` file.
pub fn pth_bytes(value: &PyValue) -> Result<Vec<u8>> {
    let pkl = to_pickle(value)?;
    let id = serialization_id(&pkl);
    let entries: [(&str, &[u8]); 6] = [
        ("data.pkl", &pkl),
        (".format_version", b"1"),
        (".storage_alignment", b"64"),
        ("byteorder", b"little"),
        ("version", b"3\n"),
        (".data/serialization_id", id.as_bytes()),
    ];
    let mut zip = ZipWriter::default();
    for (name, data) in entries {
        zip.add(&format!("{ARCHIVE}/{name}"), data)?;
    }
    zip.finish()
}

/// 40 decimal digits, like PyTorch's, but derived from the content (deterministic).
fn serialization_id(pkl: &[u8]) -> String {
    let fnv = |seed: u64| pkl.iter().fold(seed, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    format!("{:020}{:020}", fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142))
}

fn read_zip_form(bytes: &[u8]) -> Result<PyValue> {
    let entries = read_zip_directory(bytes)?;
    let first = entries.first().ok_or_else(|| zip_err("", "archive has no entries"))?;
    let archive = match first.name.split_once('/') {
        Some((a, _)) if !a.is_empty() => a.to_owned(),
        _ => return Err(zip_err(&first.name, "first entry is not inside an archive folder")),
    };
    let find = |name: &str| {
        let full = format!("{archive}/{name}");
        entries.iter().find(|e| e.name == full)
    };
    if let Some(e) = find("byteorder") {
        let order = entry_data(bytes, e)?;
        if order != b"little" {
            let got = String::from_utf8_lossy(order).into_owned();
            return Err(zip_err(&e.name, &format!("byte order {got:?}, only little is read")));
        }
    }
    let pkl_entry = find("data.pkl").ok_or_else(|| zip_err(&format!("{archive}/data.pkl"), "entry missing"))?;
    let pkl = entry_data(bytes, pkl_entry)?;
    let (value, used) = unpickle(pkl)?;
    if used != pkl.len() {
        return Err(zip_err(&pkl_entry.name, "trailing bytes after the pickle's STOP"));
    }
    Ok(value)
}

fn read_legacy_form(bytes: &[u8]) -> Result<PyValue> {
    let legacy = |reason: String| OfflineError::Legacy { reason };
    let mut pos = 0usize;
    let mut next = |what: &str| -> Result<PyValue> {
        let (v, used) = unpickle(&bytes[pos..]).map_err(|e| legacy(format!("{what}: {e}")))?;
        pos += used;
        Ok(v)
    };
    let magic = next("magic number")?;
    if magic.as_i128() != Some(LEGACY_MAGIC) {
        return Err(legacy(format!("bad magic number {magic:?}")));
    }
    let proto = next("protocol version")?;
    if proto.as_i64() != Some(LEGACY_PROTOCOL) {
        return Err(legacy(format!("protocol version {proto:?}, expected 1001")));
    }
    let sys_info = next("sys_info")?;
    if sys_info.dict_get("little_endian") != Some(&PyValue::Bool(true)) {
        return Err(legacy("sys_info does not say little_endian=True".into()));
    }
    let value = next("object")?;
    let keys = next("storage keys")?;
    match keys.as_seq() {
        Some([]) => {}
        Some(k) => return Err(legacy(format!("{} tensor storages present; only plain data is read", k.len()))),
        None => return Err(legacy(format!("storage keys are a {}", keys.type_name()))),
    }
    if pos != bytes.len() {
        return Err(legacy(format!("{} trailing bytes", bytes.len() - pos)));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offline::test_util::{fixture, TempDir};

    fn f(v: f64) -> PyValue {
        PyValue::Float(v)
    }

    /// Spec §7's example record, as the Python value torch saved.
    fn spec_record0() -> PyValue {
        let s = |x: &str| PyValue::Str(x.into());
        PyValue::Tuple(vec![
            PyValue::Int(131425),
            s("131425_539733_4880095.jpg"),
            s("539827_4880079_300_32615.jpg"),
            PyValue::Tuple(vec![PyValue::Int(383), PyValue::Int(380)]),
            PyValue::Tuple(vec![PyValue::Int(191), PyValue::Int(190)]),
            PyValue::List([258.56, 325.97, 592.76, 657.03].map(f).to_vec()),
            PyValue::List([495.99, 325.97, 592.76, 558.05, 355.29, 657.03, 258.56, 424.96].map(f).to_vec()),
            s("building_retail"),
        ])
    }

    fn sample() -> PyValue {
        read_pth(&fixture("records_zip.pth")).expect("read zip sample")
    }

    #[test]
    fn both_sample_forms_read_to_the_same_records() {
        let zip = std::fs::read(fixture("records_zip.pth")).unwrap();
        let legacy = std::fs::read(fixture("records_legacy.pth")).unwrap();
        let (a, fa) = read_pth_bytes(&zip).unwrap();
        let (b, fb) = read_pth_bytes(&legacy).unwrap();
        assert_eq!((fa, fb), (PthFormat::Zip, PthFormat::Legacy));
        assert_eq!(a, b);
        let recs = a.as_seq().expect("a list");
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0], spec_record0());
        assert_eq!(recs[2].as_seq().unwrap()[7].as_str(), Some("basketball_court"));
    }

    #[test]
    fn written_file_reads_back_and_has_torch_layout() {
        let v = sample();
        let bytes = pth_bytes(&v).unwrap();
        assert_eq!(bytes, pth_bytes(&v).unwrap(), "output is deterministic");
        assert_eq!(read_pth_bytes(&bytes).unwrap(), (v, PthFormat::Zip));
        let entries = read_zip_directory(&bytes).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "archive/data.pkl",
                "archive/.format_version",
                "archive/.storage_alignment",
                "archive/byteorder",
                "archive/version",
                "archive/.data/serialization_id"
            ]
        );
        for e in &entries {
            let data = entry_data(&bytes, e).unwrap();
            let start = data.as_ptr() as usize - bytes.as_ptr() as usize;
            assert_eq!(start % 64, 0, "{} starts at {start}", e.name);
        }
        let get = |i: usize| entry_data(&bytes, &entries[i]).unwrap();
        assert_eq!((get(3), get(4)), (&b"little"[..], &b"3\n"[..]));
        let id = get(5);
        assert!(id.len() == 40 && id.iter().all(u8::is_ascii_digit));
    }

    #[test]
    fn write_pth_then_read_pth() {
        let dir = TempDir::new("pth");
        let path = dir.path().join("x.pth");
        let v = sample();
        write_pth(&path, &v).unwrap();
        assert_eq!(read_pth(&path).unwrap(), v);
        assert!(!dir.path().join("x.pth.partial").exists());
    }

    #[test]
    fn crc_mismatch_and_compression_are_reported() {
        let mut zip = std::fs::read(fixture("records_zip.pth")).unwrap();
        zip[0x100] ^= 0x01; // inside data.pkl (starts at byte 64)
        let err = read_pth_bytes(&zip).unwrap_err().to_string();
        assert!(err.contains("CRC-32 mismatch"), "{err}");
        let mut zip = std::fs::read(fixture("records_zip.pth")).unwrap();
        zip[8] = 8; // local header method: deflate (central directory still says stored)
        assert!(read_pth_bytes(&zip).is_ok(), "only the central directory is authoritative");
        let cd = zip.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
        zip[cd + 10] = 8;
        let err = read_pth_bytes(&zip).unwrap_err().to_string();
        assert!(err.contains("compression method 8"), "{err}");
    }

    #[test]
    fn tensor_files_are_rejected() {
        // data.pkl referencing a storage through a persistent id (BINPERSID).
        let mut w = ZipWriter::default();
        w.add("archive/data.pkl", b"\x80\x02X\x01\x00\x00\x000Q.").unwrap();
        let bytes = w.finish().unwrap();
        let err = read_pth_bytes(&bytes).unwrap_err();
        assert!(matches!(err, OfflineError::UnsupportedOpcode { opcode: b'Q', .. }), "{err}");
        // Legacy stream whose storage-key list is not empty.
        let legacy = std::fs::read(fixture("records_legacy.pth")).unwrap();
        let mut bad = legacy[..legacy.len() - 6].to_vec();
        bad.extend_from_slice(b"\x80\x02]X\x01\x00\x00\x000a.");
        let err = read_pth_bytes(&bad).unwrap_err().to_string();
        assert!(err.contains("1 tensor storages"), "{err}");
        let mut trailing = legacy.clone();
        trailing.push(0);
        assert!(read_pth_bytes(&trailing).is_err());
    }

    #[test]
    fn damaged_files_never_panic() {
        for name in ["records_zip.pth", "records_legacy.pth"] {
            let good = std::fs::read(fixture(name)).unwrap();
            for n in 0..good.len() {
                assert!(read_pth_bytes(&good[..n]).is_err(), "{name} cut at {n}");
            }
            for i in 0..good.len() {
                let mut b = good.clone();
                b[i] ^= 0xa5;
                let _ = read_pth_bytes(&b); // Ok or Err, but no panic
            }
        }
    }

    #[test]
    fn python_and_torch_read_our_file() {
        let dir = TempDir::new("pth-py");
        let path = dir.path().join("ours.pth");
        write_pth(&path, &sample()).unwrap();
        let script = r#"
import sys, zipfile, pickle
p = sys.argv[1]
z = zipfile.ZipFile(p)
assert z.testzip() is None
v = pickle.loads(z.read("archive/data.pkl"))
assert v[0] == (131425, '131425_539733_4880095.jpg', '539827_4880079_300_32615.jpg', (383, 380), (191, 190), [258.56, 325.97, 592.76, 657.03], [495.99, 325.97, 592.76, 558.05, 355.29, 657.03, 258.56, 424.96], 'building_retail'), v[0]
assert len(v) == 3 and v[2][5] == [900.0, 1000.0, 1023.0, 1023.0]
try:
    import torch
except ImportError:
    print("torch not importable: torch.load check skipped")
    sys.exit(0)
t = torch.load(p, weights_only=True)
assert t == v, t
print("torch.load(weights_only=True) OK")
"#;
        // SMGEO_PYTHON: a Python with torch (e.g. a venv's), as for `weights import`.
        let py = std::env::var("SMGEO_PYTHON").unwrap_or_else(|_| "python3".into());
        match std::process::Command::new(&py).arg("-c").arg(script).arg(&path).output() {
            Err(e) => println!("{py} not available ({e}): Python checks skipped"),
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
                println!("{text}");
                assert!(out.status.success(), "python check failed: {text}");
            }
        }
    }
}

//! Prompt validation, coordinate order, ids and topic names.

use super::*;

#[test]
fn prompt_accepts_valid_and_keeps_fields() {
    let p = Prompt::parse(br#"{"id":"p1","x":10.5,"y":3,"pts_ns":42,"mode":"track"}"#).unwrap();
    assert_eq!(p, Prompt { id: "p1".into(), x: 10.5, y: 3.0, pts_ns: Some(42), mode: PromptMode::Track });
    let q = Prompt::parse(br#"{"id":"p2","x":0,"y":0,"mode":"once"}"#).unwrap();
    assert_eq!(q.pts_ns, None);
}

#[test]
fn prompt_rejections_name_the_problem_and_id() {
    let cases: [(&[u8], Option<&str>, &str); 9] = [
        (b"{not json", None, "not JSON"),
        (b"[1,2]", None, "expected a JSON object"),
        (br#"{"x":1,"y":2,"mode":"once"}"#, None, "missing field id"),
        (br#"{"id":"a","y":2,"mode":"once"}"#, Some("a"), "missing field x"),
        (br#"{"id":"a","x":"1","y":2,"mode":"once"}"#, Some("a"), "field x: expected number"),
        (br#"{"id":"a","x":1,"y":-2,"mode":"once"}"#, Some("a"), "field y"),
        (br#"{"id":"a","x":1,"y":2,"mode":"forever"}"#, Some("a"), "field mode"),
        (br#"{"id":"a","x":1,"y":2,"mode":"once","z":1}"#, Some("a"), "unknown field"),
        (br#"{"id":"a","x":1,"y":2,"pts_ns":-5,"mode":"once"}"#, Some("a"), "pts_ns"),
    ];
    for (bytes, want_id, want) in cases {
        match Prompt::parse(bytes) {
            Err(PublishError::BadPrompt { id, reason }) => {
                assert_eq!(id.as_deref(), want_id, "{reason}");
                assert!(reason.contains(want), "{reason:?} lacks {want:?}");
            }
            other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(bytes)),
        }
    }
}

#[test]
fn lonlat_serialises_lon_first() {
    let v = serde_json::to_value(LonLat { lon: 11.5, lat: 48.1 }).unwrap();
    assert_eq!(v, serde_json::json!([11.5, 48.1]));
}

#[test]
fn uuid_v4_has_version_and_variant() {
    let u = new_uuid_v4();
    assert_eq!(u.len(), 36);
    assert_eq!(&u[14..15], "4");
    assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
    assert_ne!(u, new_uuid_v4());
}

#[test]
fn topics_validate_prefix() {
    let t = Topics::for_stream("cam1").unwrap();
    assert_eq!(t.targets(), "smgeo/cam1/targets");
    assert_eq!(t.status(), "smgeo/cam1/status");
    assert!(Topics::new("a/+/b").is_err());
    assert!(Topics::new("a/").is_err());
    assert!(Topics::new("").is_err());
}

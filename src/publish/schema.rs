//! JSON Schemas (draft 2020-12) of every MQTT payload, embedded from `schemas/` at the
//! repository root so the files downstream users read are the ones the tests check.
//!
//! | schema id | file | topic |
//! |---|---|---|
//! | `smgeo.target.v1` | `target.schema.json` | `<prefix>/targets` |
//! | prompt (inbound) | `prompt.schema.json` | `<prefix>/prompts` |
//! | `smgeo.status.v1` | `status.schema.json` | `<prefix>/status` (retained) |
//! | `smgeo.error.v1` | `error.schema.json` | `<prefix>/status` (not retained) |
//! | `smgeo.telemetry.v1` | `telemetry.schema.json` | `<prefix>/telemetry` |

pub const TARGET: &str = include_str!("../../schemas/target.schema.json");
pub const PROMPT: &str = include_str!("../../schemas/prompt.schema.json");
pub const STATUS: &str = include_str!("../../schemas/status.schema.json");
pub const ERROR: &str = include_str!("../../schemas/error.schema.json");
pub const TELEMETRY: &str = include_str!("../../schemas/telemetry.schema.json");

/// `(file name, schema text)` of every payload schema.
pub fn all() -> [(&'static str, &'static str); 5] {
    [
        ("target.schema.json", TARGET),
        ("prompt.schema.json", PROMPT),
        ("status.schema.json", STATUS),
        ("error.schema.json", ERROR),
        ("telemetry.schema.json", TELEMETRY),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::message::*;
    use super::super::testutil::{assert_valid, sample_target, validator};
    use super::*;
    use serde_json::json;

    #[test]
    fn every_schema_compiles_as_draft_2020_12() {
        for (name, text) in all() {
            let v: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(v["$schema"], "https://json-schema.org/draft/2020-12/schema", "{name}");
            validator(text);
        }
    }

    #[test]
    fn real_target_output_is_valid_and_broken_ones_are_not() {
        let val = validator(TARGET);
        for i in 0..2 {
            let v = serde_json::to_value(sample_target("cam1", i)).unwrap();
            assert_valid(&val, &v);
        }
        let good = serde_json::to_value(sample_target("cam1", 0)).unwrap();
        let breakers: [fn(&mut serde_json::Value); 6] = [
            |v| v["geometry"]["coordinates"] = json!([48.18, 191.0]),
            |v| v["properties"]["footprint"].as_array_mut().unwrap().truncate(4),
            |v| v["properties"]["schema"] = json!("smgeo.target.v2"),
            |v| v["properties"]["utc"] = json!("yesterday"),
            |v| v["properties"]["model"]["weights_sha256"] = json!("xyz"),
            |v| v["properties"].as_object_mut().unwrap().remove("id").map(|_| ()).unwrap_or(()),
        ];
        for (i, brk) in breakers.iter().enumerate() {
            let mut bad = good.clone();
            brk(&mut bad);
            assert!(!val.is_valid(&bad), "breaker {i} accepted: {bad}");
        }
    }

    #[test]
    fn real_status_error_telemetry_output_is_valid() {
        let p = PipelineStatus {
            fps: 29.97,
            queue_depth: 2,
            last_error: Some("chip outside coverage".into()),
            ..Default::default()
        };
        let st = StatusMessage::new(OnlineState::Online, "cam1", &p, 3, Default::default());
        let sv = validator(STATUS);
        assert_valid(&sv, &serde_json::to_value(&st).unwrap());
        let mut bad = serde_json::to_value(&st).unwrap();
        bad["state"] = json!("sleeping");
        assert!(!sv.is_valid(&bad));
        bad = serde_json::to_value(&st).unwrap();
        bad["fps"] = json!(-1);
        assert!(!sv.is_valid(&bad));

        let ev = validator(ERROR);
        for id in [Some("p1".to_string()), None] {
            assert_valid(&ev, &serde_json::to_value(ErrorMessage::new("cam1", id, "missing field x".into())).unwrap());
        }
        assert!(!ev.is_valid(&json!({"schema": "smgeo.error.v1", "stream": "cam1", "reason": "x"})));

        let tv = validator(TELEMETRY);
        let plat = PlatformPosition { lon: 11.5, lat: 48.1, alt_m: Some(812.0) };
        let t = TelemetryMessage::new("cam1", 5, Some(plat), Some(LonLat { lon: 11.51, lat: 48.11 }));
        assert_valid(&tv, &serde_json::to_value(&t).unwrap());
        assert_valid(&tv, &serde_json::to_value(TelemetryMessage::new("cam1", 5, None, None)).unwrap());
        let mut bad = serde_json::to_value(&t).unwrap();
        bad["frame_center"] = json!([11.5]);
        assert!(!tv.is_valid(&bad));
    }

    #[test]
    fn prompt_schema_agrees_with_the_parser() {
        let pv = validator(PROMPT);
        let cases: [&str; 8] = [
            r#"{"id":"p1","x":10.5,"y":3,"pts_ns":42,"mode":"track"}"#,
            r#"{"id":"p2","x":0,"y":0,"mode":"once"}"#,
            r#"{"id":"p3","x":1,"y":2,"pts_ns":null,"mode":"once"}"#,
            r#"{"x":1,"y":2,"mode":"once"}"#,
            r#"{"id":"a","x":"1","y":2,"mode":"once"}"#,
            r#"{"id":"a","x":1,"y":2,"mode":"forever"}"#,
            r#"{"id":"a","x":1,"y":-2,"mode":"once"}"#,
            r#"{"id":"a","x":1,"y":2,"mode":"once","extra":true}"#,
        ];
        for c in cases {
            let v: serde_json::Value = serde_json::from_str(c).unwrap();
            assert_eq!(pv.is_valid(&v), Prompt::parse(c.as_bytes()).is_ok(), "{c}");
        }
        let ok = Prompt::parse(cases[0].as_bytes()).unwrap();
        assert_valid(&pv, &serde_json::to_value(ok).unwrap());
    }
}

use super::*;

fn readers() -> Vec<ReaderRecord> {
    EventKind::ALL
        .into_iter()
        .map(|k| ReaderRecord::new(k).unwrap())
        .collect()
}

fn plan(schema: &str) -> Result<WriterPlan, CompileError> {
    let json: Json = serde_json::from_str(schema).unwrap();
    WriterPlan::compile(&Parsed::parse(&json).unwrap(), &readers())
}

#[test]
fn reader_schemas_match_the_structs_and_enum_orders() {
    for k in EventKind::ALL {
        let r = ReaderRecord::new(k).unwrap();
        assert_eq!(r.fields.len(), shape(k).len());
    }
    // The enum tables used by `build` follow the symbol lists.
    fn names<T: serde::Serialize>(v: &[T]) -> Vec<String> {
        v.iter()
            .map(|e| {
                serde_json::to_value(e)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
    assert_eq!(names(&EMAIL_TYPES), EMAIL_SYMBOLS);
    assert_eq!(names(&PURCHASE_TYPES), PURCHASE_SYMBOLS);
    assert_eq!(names(&SURVEY_KINDS), SURVEY_SYMBOLS);
}

#[test]
fn identity_plans_read_every_field() {
    for k in EventKind::ALL {
        let p = plan(k.schema_json()).unwrap();
        let Top::Record(r) = &p.top else { panic!() };
        assert!(r.defaults.is_empty());
        assert!(r.ops.iter().all(|o| matches!(o, Op::Read { .. })), "{k:?}");
    }
}

#[test]
fn only_our_own_records_are_decoded_directly() {
    for k in EventKind::ALL {
        let p = plan(k.schema_json()).unwrap();
        let Top::Record(r) = &p.top else { panic!() };
        assert!(r.direct, "{k:?}");
    }
    // Reordered fields, a skipped field, a promotion, a default: through the slots.
    let survey = |fields: &str| {
        plan(&format!(
            r#"{{"type":"record","name":"SurveyResponse","namespace":"engaged.v1","fields":[{fields}]}}"#
        ))
        .unwrap()
    };
    let kind = r#"{"name":"kind","type":{"type":"enum","name":"SurveyKind","symbols":["NPS","CSAT","CES"]}}"#;
    let opt = |n: &str| format!(r#"{{"name":"{n}","type":["null","string"]}}"#);
    let base = [
        r#"{"name":"event_id","type":"string"}"#.to_string(),
        r#"{"name":"event_time","type":"long"}"#.to_string(),
        opt("customer_id"),
        r#"{"name":"survey_id","type":"string"}"#.to_string(),
        kind.to_string(),
        r#"{"name":"score","type":"int"}"#.to_string(),
        opt("comment"),
    ];
    let direct = |p: &WriterPlan| matches!(&p.top, Top::Record(r) if r.direct);
    assert!(direct(&survey(&base.join(","))));
    let mut swapped = base.clone();
    swapped.swap(0, 3);
    let mut extra = base.to_vec();
    extra.push(r#"{"name":"x","type":"long"}"#.to_string());
    let mut promoted = base.clone();
    promoted[1] = r#"{"name":"event_time","type":"int"}"#.to_string();
    let mut flipped = base.clone();
    flipped[6] = r#"{"name":"comment","type":["string","null"]}"#.to_string();
    let mut symbols = base.clone();
    symbols[4] = kind.replace(r#""CES"]"#, r#""CES","X"]"#);
    for fields in [
        swapped.join(","),
        extra.join(","),
        promoted.join(","),
        flipped.join(","),
        symbols.join(","),
        base[..6].join(","),
    ] {
        assert!(!direct(&survey(&fields)), "{fields}");
    }
}

#[test]
fn missing_required_field_is_incompatible() {
    let e = plan(
        r#"{"type":"record","name":"SurveyResponse","namespace":"engaged.v1","fields":[
            {"name":"event_id","type":"string"},{"name":"event_time","type":"long"},
            {"name":"survey_id","type":"string"},
            {"name":"kind","type":{"type":"enum","name":"SurveyKind","symbols":["NPS"]}}]}"#,
    )
    .unwrap_err();
    assert!(
        matches!(&e, CompileError::Incompatible(m) if m.contains("`score`")),
        "{e:?}"
    );
}

#[test]
fn wrong_types_and_names_are_rejected() {
    let e = plan(r#"{"type":"record","name":"Nope","fields":[]}"#).unwrap_err();
    assert!(matches!(e, CompileError::NotAnEvent(_)));
    assert!(matches!(
        plan(r#""string""#),
        Err(CompileError::NotAnEvent(_))
    ));
    let e = plan(
        r#"{"type":"record","name":"SurveyResponse","fields":[
            {"name":"event_id","type":"string"},{"name":"event_time","type":"double"},
            {"name":"survey_id","type":"string"},{"name":"score","type":"int"},
            {"name":"kind","type":{"type":"enum","name":"SurveyKind","symbols":["NPS"]}}]}"#,
    )
    .unwrap_err();
    assert!(
        matches!(&e, CompileError::Incompatible(m) if m.contains("event_time")),
        "{e:?}"
    );
    // An enum with another name does not resolve.
    let e = plan(
        r#"{"type":"record","name":"SurveyResponse","fields":[
            {"name":"event_id","type":"string"},{"name":"event_time","type":"long"},
            {"name":"survey_id","type":"string"},{"name":"score","type":"int"},
            {"name":"kind","type":{"type":"enum","name":"Other","symbols":["NPS"]}}]}"#,
    )
    .unwrap_err();
    assert!(
        matches!(&e, CompileError::Incompatible(m) if m.contains("kind")),
        "{e:?}"
    );
}

#[test]
fn promotions_and_optional_wrapping_compile() {
    let p = plan(
        r#"{"type":"record","name":"Purchase","fields":[
            {"name":"event_id","type":"bytes"},
            {"name":"event_time","type":"int"},
            {"name":"customer_id","type":["null","string"]},
            {"name":"order_id","type":"string"},
            {"name":"type","type":{"type":"enum","name":"PurchaseType","symbols":["REFUND","ORDER","GIFT"]}},
            {"name":"amount_minor","type":"int"},
            {"name":"currency","type":"string"},
            {"name":"cost_minor","type":"int"},
            {"name":"items","type":"int"}]}"#,
    )
    .unwrap();
    let Top::Record(r) = &p.top else { panic!() };
    let reads: Vec<&Read> = r
        .ops
        .iter()
        .filter_map(|o| match o {
            Op::Read { read, .. } => Some(read),
            _ => None,
        })
        .collect();
    assert_eq!(reads[0], &Read::Str);
    assert_eq!(reads[1], &Read::IntToLong);
    assert!(matches!(reads[2], Read::Union(b) if b[0].is_err() && b[1] == Ok(Read::Str)));
    assert!(matches!(reads[4], Read::Enum { map, .. } if **map == [Some(1), Some(0), None]));
    assert_eq!(reads[7], &Read::IntToLong);
    assert_eq!(r.defaults, vec![(9, Val::Null)]);
}

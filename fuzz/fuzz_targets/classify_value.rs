//! Classification of arbitrary stored values, and the scan engine around it:
//! never panics, whatever the bytes.
#![no_main]
use kube_kms::inspect::classify::{classify, Classifier};
use kube_kms::inspect::scan::{ResourceFilter, Scan, ScanOptions};
use kube_kms::inspect::{ObservationSink, Observed, Revision};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let classification = classify(data);
    let _ = classification.annotation_keys().count();
    let named = Classifier::with_names(["key:1", "kube-kms"]).classify(data);
    let _ = named.name;
    // The first byte splits key and value, so keys are fuzzed too.
    let split = usize::from(data.first().copied().unwrap_or(0)).min(data.len());
    let (key, value) = data.split_at(split);
    let mut scan = Scan::new(ScanOptions {
        prefix: Vec::new(),
        resources: ResourceFilter::All,
        ..ScanOptions::default()
    });
    scan.observe(Observed::Put {
        key,
        revision: Revision { main: 1, sub: 0 },
        value,
    });
    scan.observe(Observed::Delete {
        key: value,
        revision: Revision { main: 2, sub: 0 },
    });
    let result = scan.finish();
    let mut out = Vec::new();
    let _ = kube_kms::inspect::report::write_json(&mut out, &result, &Default::default());
    let _ = kube_kms::inspect::report::write_table(&mut out, &result, &Default::default());
});

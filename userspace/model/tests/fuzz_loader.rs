//! Property-based fuzzing of the file loader (proptest, bounded: a few
//! thousand cases, well under a second each run). Whatever the bytes,
//! `parse_file` returns objects and warnings; it never panics. Inputs that
//! once crashed it are kept below as regression tests.

use std::path::Path;

use proptest::prelude::*;
use weir_model::load::parse_file;

const VALID: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n- addresses: [10.244.1.2]\n  conditions: {ready: true}\n";

fn check(bytes: &[u8]) {
    for name in ["f.yaml", "f.json"] {
        if let Ok(loaded) = parse_file(Path::new(name), bytes) {
            // Every warning names the file.
            assert!(loaded.warnings.iter().all(|w| w.file.is_some()));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    #[test]
    fn mutated_valid_files_never_panic(
        edits in proptest::collection::vec((0usize..VALID.len(), any::<u8>()), 1..8),
        cut in 0usize..=VALID.len(),
    ) {
        let mut b = VALID.as_bytes().to_vec();
        for (i, v) in edits {
            b[i] = v;
        }
        b.truncate(cut.max(1));
        check(&b);
    }

    #[test]
    fn structured_garbage_never_panics(
        port in any::<i64>(),
        ip in "[0-9a-z.:]{0,20}",
        proto in "[A-Z]{0,5}",
        kind in prop_oneof!["Service", "EndpointSlice", "Pod", "Namespace", "Node", "NetworkPolicy", "List", "[A-Za-z]{0,8}"],
    ) {
        let doc = format!(
            "apiVersion: v1\nkind: {kind}\nmetadata: {{name: x}}\nspec:\n  clusterIP: \"{ip}\"\n  ports: [{{port: {port}, protocol: {proto}}}]\naddressType: IPv4\nendpoints: [{{addresses: [\"{ip}\"]}}]\nitems: [{{kind: Service}}]\n"
        );
        check(doc.as_bytes());
    }
}

#[test]
fn regression_inputs_never_panic() {
    // Kept from fuzzing runs and hand-written edge cases.
    for input in [
        &b""[..],
        b"---\n---\n",
        b"null",
        b"[]",
        b"kind: List\nitems: 5\n",
        b"kind: List\nitems: [null, 1, {kind: List, items: []}]\n",
        b"apiVersion: v1\nkind: Service\nmetadata: {name: \"\"}\n",
        b"apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 99999999999}]}\n",
        b"\xef\xbb\xbfapiVersion: v1\n",
        b"&a [*a]",
        b"a: &a\n  b: *a\n",
    ] {
        check(input);
    }
}

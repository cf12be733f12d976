//! The object store client against a real S3 server (moto): conditional reads.

use ocellus_storage::s3::{Fetched, Store};
use ocellus_tests::s3::S3Server;

#[test]
fn a_conditional_read_transfers_an_object_only_when_it_changed() {
    let s3 = S3Server::start().expect("S3 server");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = Store::new(&s3.config(), "cond");
        store.ensure_bucket().await.expect("bucket");
        assert_eq!(store.get_if_changed("results.jsonl", None).await.expect("get"), Fetched::Missing);
        store.put("results.jsonl", "{\"epoch\":1}\n".into(), "application/x-ndjson").await.expect("put");
        let Fetched::Body { bytes, etag: Some(first) } =
            store.get_if_changed("results.jsonl", None).await.expect("get")
        else {
            panic!("no body or no ETag")
        };
        assert_eq!(&bytes[..], b"{\"epoch\":1}\n");
        assert_eq!(store.get_if_changed("results.jsonl", Some(&first)).await.expect("get"), Fetched::NotModified);
        store.put("results.jsonl", "{\"epoch\":1}\n{\"epoch\":2}\n".into(), "application/x-ndjson").await.expect("put");
        match store.get_if_changed("results.jsonl", Some(&first)).await.expect("get") {
            Fetched::Body { bytes, etag } => {
                assert_eq!(bytes.len(), 24);
                assert_ne!(etag.as_deref(), Some(first.as_str()));
            }
            other => panic!("a changed object was not read: {other:?}"),
        }
    });
}

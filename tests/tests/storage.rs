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

#[test]
fn a_presigned_url_uploads_and_downloads_without_credentials() {
    let s3 = S3Server::start().expect("S3 server");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = Store::new(&s3.config(), "presign");
        store.ensure_bucket().await.expect("bucket");
        let ttl = std::time::Duration::from_secs(600);
        let put = store.presign_put("ns/datasets/d/uploads/s1/a.zip", ttl).await.expect("presign");
        assert!(put.contains("X-Amz-Signature=") && put.contains("X-Amz-Expires=600"), "{put}");
        assert!(!put.contains(&s3.config().secret_access_key), "the secret is not in the URL");
        // A plain HTTP client with no credentials, any content type (as the Ultralytics SDK sends).
        let http = reqwest::Client::new();
        let r = http
            .put(&put)
            .header("content-type", "application/octet-stream")
            .body(vec![7u8; 1000])
            .send()
            .await
            .expect("PUT");
        assert!(r.status().is_success(), "{}", r.status());
        assert_eq!(store.head("ns/datasets/d/uploads/s1/a.zip").await.expect("head"), Some(1000));
        let get = store.presign_get("ns/datasets/d/uploads/s1/a.zip", ttl).await.expect("presign");
        let body = http.get(&get).send().await.expect("GET").bytes().await.expect("body");
        assert_eq!(body.len(), 1000);
        assert!(store.presign_put("k", std::time::Duration::from_secs(8 * 24 * 3600)).await.is_err(), "over 7 days");
    });
}

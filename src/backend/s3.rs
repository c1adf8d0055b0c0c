//! An S3-compatible bucket as a repository (`s3://bucket/prefix`), through
//! aws-sdk-s3.
//!
//! The async boundary sits here, and only here: the SDK runs on a small
//! tokio runtime that this backend owns, and every `Backend` call blocks
//! its caller's thread on one request (`Handle::block_on`). The engine stays
//! plain threads: the uploaders, the restore workers and the sealers keep
//! several requests in flight simply by being several threads, and nothing
//! above this file knows tokio exists.
//!
//! Object semantics:
//! - put-if-absent is a PUT with `If-None-Match: *` (a 412 means "already
//!   there"). A server that answers that it does not support the header gets
//!   HEAD-then-PUT instead, said once in the log: weaker (two writers racing
//!   for one key can both "win"), which the format tolerates everywhere but
//!   in manifest headers (docs/FORMAT.md §10);
//! - every PUT carries a CRC32C of its body, which the server checks; every
//!   GET is checked for its length, and a whole-object GET against the
//!   CRC32C the server stored (ranged reads are checked by the reader: every
//!   byte of a pack is sealed or hashed);
//! - objects above `multipart_threshold` go up in parts; a failed multipart
//!   upload is aborted, and `cleanup_interrupted` aborts the uploads an
//!   interrupted run left behind, so none bills forever;
//! - retries are not done here (the SDK's are off): `RetryBackend` retries
//!   what this file marks `Transient`, the same way for every backend.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, CompletedPart, StorageClass};
use base64::Engine as _;

use super::*;

const COND_UNKNOWN: u8 = 0;
const COND_YES: u8 = 1;
const COND_NO: u8 = 2;

pub struct S3Backend {
    rt: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
    bucket: String,
    /// "" or "some/prefix/".
    prefix: String,
    location: String,
    endpoint: String,
    pack_class: Option<StorageClass>,
    multipart_threshold: u64,
    part_size: u64,
    /// Does the server honour `If-None-Match: *` on PUT?
    conditional: AtomicU8,
    /// Every real HTTP request (multipart parts and list pages each
    /// count), which `requests()` reports.
    pub counts: RequestCounter,
}

/// `s3://bucket/prefix` → (bucket, "prefix/").
pub fn parse_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| anyhow::anyhow!("{url:?} is not an s3:// URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let ok = (3..=63).contains(&bucket.len())
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.']);
    if !ok {
        anyhow::bail!(
            "repository URL {url:?}: {bucket:?} is not a valid bucket name (3-63 characters: lowercase letters, digits, '-' and '.'); use s3://BUCKET/PREFIX"
        );
    }
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() {
        super::check_key(prefix).map_err(|_| {
            anyhow::anyhow!("repository URL {url:?}: the prefix {prefix:?} may hold only [A-Za-z0-9._-] and '/'")
        })?;
    }
    let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
    Ok((bucket.to_string(), prefix))
}

/// A pack body shared with the uploader, as the SDK's body bytes.
struct SharedBody(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBody {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

fn crc32c_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(data).to_be_bytes())
}

/// Packs may go to a colder class, but one that a range read can reach.
fn pack_class(name: &str) -> anyhow::Result<StorageClass> {
    let upper = name.to_ascii_uppercase();
    if matches!(upper.as_str(), "GLACIER" | "DEEP_ARCHIVE") {
        anyhow::bail!(
            "[s3] pack_storage_class {name:?}: objects in {upper} cannot be read without a restore request first, so restores would fail; use STANDARD_IA, GLACIER_IR or INTELLIGENT_TIERING"
        );
    }
    let known = ["STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "REDUCED_REDUNDANCY"];
    if !known.contains(&upper.as_str()) {
        anyhow::bail!(
            "[s3] pack_storage_class {name:?} is not a storage class this agent knows: use one of {}",
            known.join(", ")
        );
    }
    Ok(StorageClass::from(upper.as_str()))
}

impl S3Backend {
    pub fn open(url: &str, settings: &S3Settings, timeout: Duration) -> anyhow::Result<S3Backend> {
        let (bucket, prefix) = parse_url(url)?;
        let pack_class = settings.pack_storage_class.as_deref().map(pack_class).transpose()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("n2s-s3")
            .enable_all()
            .build()
            .map_err(|e| anyhow::anyhow!("cannot start the S3 client's runtime: {e}"))?;
        let endpoint_setting = settings.endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        let region = settings
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok());
        let sdk_config = rt.block_on(async {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                // Retries belong to RetryBackend, the same for every backend.
                .retry_config(aws_config::retry::RetryConfig::disabled())
                .timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(10))
                        .operation_attempt_timeout(timeout)
                        .build(),
                );
            // Without a region anywhere, the SDK refuses to sign; a custom
            // endpoint (MinIO, SeaweedFS...) rarely cares which.
            loader = loader.region(aws_config::Region::new(region.clone().unwrap_or_else(|| "us-east-1".into())));
            if let Some((id, secret)) = &settings.credentials {
                loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                    id.clone(),
                    secret.clone(),
                    None,
                    None,
                    "n2s-library",
                ));
            }
            loader.load().await
        });
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(settings.path_style)
            // Checksums are computed here (CRC32C headers), not with the SDK's
            // aws-chunked trailers, which many S3 servers refuse.
            .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired);
        if let Some(e) = &endpoint_setting {
            conf = conf.endpoint_url(e);
        }
        let client = aws_sdk_s3::Client::from_conf(conf.build());
        let endpoint = endpoint_setting.clone().unwrap_or_else(|| "AWS".to_string());
        let location = format!("s3://{bucket}/{}", prefix.trim_end_matches('/'));
        let threshold = settings.multipart_threshold.unwrap_or(64 << 20).max(5 << 20);
        Ok(S3Backend {
            rt,
            client,
            bucket,
            prefix,
            location,
            endpoint,
            pack_class,
            multipart_threshold: threshold,
            part_size: 16 << 20,
            conditional: AtomicU8::new(COND_UNKNOWN),
            counts: RequestCounter::new(),
        })
    }

    fn full(&self, key: &str) -> BResult<String> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.handle().block_on(f)
    }

    /// One line for an S3 error, naming the setting to fix where there is one.
    fn map_err<E>(&self, what: &str, key: &str, e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> BackendError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let b = &self.bucket;
        match &e {
            SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
                let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
                let region_hint = e
                    .raw_response()
                    .and_then(|r| r.headers().get("x-amz-bucket-region"))
                    .map(|r| format!(" (the bucket is in {r})"))
                    .unwrap_or_default();
                let code = e.code().unwrap_or("").to_string();
                let msg = e.message().unwrap_or("").to_string();
                let detail =
                    format!("{status} {code}{}", if msg.is_empty() { String::new() } else { format!(": {msg}") });
                match (status, code.as_str()) {
                    (_, "NoSuchBucket") => BackendError::Other(anyhow::anyhow!(
                        "the bucket {b} does not exist at {}: create it, or fix the bucket in the repository URL",
                        self.endpoint
                    )),
                    (404, _) | (_, "NoSuchKey") | (_, "NotFound") => BackendError::NotFound(key.to_string()),
                    (301, _)
                    | (_, "PermanentRedirect")
                    | (_, "AuthorizationHeaderMalformed")
                    | (_, "IllegalLocationConstraintException") => BackendError::Other(anyhow::anyhow!(
                        "the bucket {b} is in another region than the one the agent used{region_hint}: set `region` in [s3], --s3-region or AWS_REGION ({detail})"
                    )),
                    (403, _) | (_, "AccessDenied") | (_, "InvalidAccessKeyId") | (_, "SignatureDoesNotMatch") => {
                        BackendError::Other(anyhow::anyhow!(
                            "S3 refused {what} {key} in bucket {b} ({detail}): check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the AWS profile) and the bucket's policy"
                        ))
                    }
                    (429 | 500..=599, _)
                    | (_, "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable") => {
                        BackendError::Transient(anyhow::anyhow!("S3 {what} {key} failed ({detail})"))
                    }
                    (409, _) => BackendError::Transient(anyhow::anyhow!("S3 {what} {key} conflicted ({detail})")),
                    (0, _) => BackendError::Transient(anyhow::anyhow!("S3 {what} {key}: a bad response ({e})")),
                    _ => BackendError::Other(anyhow::anyhow!("S3 {what} {key} in bucket {b} failed ({detail})")),
                }
            }
            SdkError::TimeoutError(_) => {
                BackendError::Transient(anyhow::anyhow!("S3 {what} {key} timed out at {}", self.endpoint))
            }
            SdkError::DispatchFailure(d) => BackendError::Transient(anyhow::anyhow!(
                "cannot reach the S3 endpoint {} ({:?}): check `endpoint` in [s3], --s3-endpoint or AWS_ENDPOINT_URL",
                self.endpoint,
                d.as_connector_error().map(|c| c.to_string())
            )),
            _ => {
                BackendError::Other(anyhow::anyhow!("S3 {what} {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)))
            }
        }
    }

    fn class_for(&self, key: &str) -> Option<StorageClass> {
        key.starts_with("data/").then(|| self.pack_class.clone()).flatten()
    }

    async fn put_plain(&self, full: &str, key: &str, data: &Arc<Vec<u8>>, conditional: bool) -> BResult<PutOutcome> {
        // The body shares the caller's bytes: no copy per attempt.
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(full)
            .content_length(data.len() as i64)
            .checksum_crc32_c(crc32c_b64(data))
            .body(ByteStream::from(bytes::Bytes::from_owner(SharedBody(data.clone()))));
        if conditional {
            req = req.if_none_match("*");
        }
        if let Some(c) = self.class_for(key) {
            req = req.storage_class(c);
        }
        self.counts.put(data.len() as u64);
        match req.send().await {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                if conditional && status == Some(412) {
                    return Ok(PutOutcome::AlreadyExists);
                }
                if conditional && (status == Some(501) || e.code() == Some("NotImplemented")) {
                    return Err(BackendError::Other(anyhow::anyhow!("conditional writes not supported")));
                }
                Err(self.map_err("storing", key, e))
            }
        }
    }

    async fn head(&self, full: &str, key: &str) -> BResult<Option<u64>> {
        self.counts.head();
        match self.client.head_object().bucket(&self.bucket).key(full).send().await {
            Ok(o) => Ok(Some(o.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) => match self.map_err("checking", key, e) {
                BackendError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn put_multipart(&self, full: &str, key: &str, data: &[u8]) -> BResult<PutOutcome> {
        let mut create = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .checksum_algorithm(ChecksumAlgorithm::Crc32C);
        if let Some(c) = self.class_for(key) {
            create = create.storage_class(c);
        }
        self.counts.put(0);
        let up = create.send().await.map_err(|e| self.map_err("starting a multipart upload of", key, e))?;
        let id = up.upload_id().unwrap_or_default().to_string();
        let result = async {
            let mut parts = Vec::new();
            for (i, part) in data.chunks(self.part_size as usize).enumerate() {
                let n = i as i32 + 1;
                let sum = crc32c_b64(part);
                self.counts.put(part.len() as u64);
                let r = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(&id)
                    .part_number(n)
                    .content_length(part.len() as i64)
                    .checksum_crc32_c(&sum)
                    .body(ByteStream::from(part.to_vec()))
                    .send()
                    .await
                    .map_err(|e| self.map_err("uploading a part of", key, e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(r.e_tag().map(str::to_string))
                        .checksum_crc32_c(sum)
                        .build(),
                );
            }
            let mut done = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
            if self.conditional.load(Ordering::Relaxed) != COND_NO {
                done = done.if_none_match("*");
            }
            self.counts.put(0);
            match done.send().await {
                Ok(_) => Ok(PutOutcome::Created),
                Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(412) => Ok(PutOutcome::AlreadyExists),
                Err(e) => Err(self.map_err("completing the upload of", key, e)),
            }
        }
        .await;
        if !matches!(result, Ok(PutOutcome::Created)) {
            // Never leave parts behind to bill forever.
            self.counts.delete();
            let _ = self.client.abort_multipart_upload().bucket(&self.bucket).key(full).upload_id(&id).send().await;
        }
        result
    }

    /// Abort multipart uploads under this repository's prefix that were
    /// started more than `older_than` ago: what an interrupted run left.
    /// (A younger one may be another agent's, still running.)
    pub fn abort_stale_uploads(&self, older_than: Duration) -> BResult<u64> {
        self.block(async {
            let mut aborted = 0u64;
            let mut marker: Option<String> = None;
            let mut upload_marker: Option<String> = None;
            let cutoff = std::time::SystemTime::now() - older_than;
            loop {
                self.counts.list();
                let page = self
                    .client
                    .list_multipart_uploads()
                    .bucket(&self.bucket)
                    .prefix(&self.prefix)
                    .set_key_marker(marker.clone())
                    .set_upload_id_marker(upload_marker.clone())
                    .send()
                    .await
                    .map_err(|e| self.map_err("listing multipart uploads in", "", e))?;
                for u in page.uploads() {
                    let started = u.initiated().and_then(|t| std::time::SystemTime::try_from(*t).ok());
                    // A server that reports a start long before this agent
                    // existed (moto says 2010 for every upload) cannot tell
                    // an abandoned upload from another agent's running one:
                    // leave those alone.
                    let plausible = std::time::UNIX_EPOCH + Duration::from_secs(1_577_836_800); // 2020-01-01
                    if started.is_some_and(|s| s < plausible) {
                        log::debug!(
                            "not aborting the upload of {:?}: the server says it began {:?}",
                            u.key(),
                            u.initiated()
                        );
                        continue;
                    }
                    if started.is_some_and(|s| s < cutoff)
                        && let (Some(k), Some(id)) = (u.key(), u.upload_id())
                    {
                        self.counts.delete();
                        self.client
                            .abort_multipart_upload()
                            .bucket(&self.bucket)
                            .key(k)
                            .upload_id(id)
                            .send()
                            .await
                            .map_err(|e| self.map_err("aborting the upload of", k, e))?;
                        log::info!("aborted an interrupted multipart upload of {k} (started {:?})", u.initiated());
                        aborted += 1;
                    }
                }
                if !page.is_truncated().unwrap_or(false) {
                    break;
                }
                marker = page.next_key_marker().map(str::to_string);
                upload_marker = page.next_upload_id_marker().map(str::to_string);
                if marker.is_none() && upload_marker.is_none() {
                    break;
                }
            }
            Ok(aborted)
        })
    }
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn requests(&self) -> Option<RequestCounts> {
        Some(self.counts.snapshot())
    }

    fn cleanup_interrupted(&self) -> BResult<u64> {
        // An hour: a younger upload may be another agent's, still running.
        // (Tests shorten it; nothing else may.)
        let secs = std::env::var("N2S_S3_STALE_UPLOAD_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(3600);
        self.abort_stale_uploads(Duration::from_secs(secs))
    }

    fn delete_many(&self, keys: &[String]) -> BResult<()> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        // At most 1000 keys per DeleteObjects request.
        for batch in keys.chunks(1000) {
            let mut objects = Vec::with_capacity(batch.len());
            for k in batch {
                let full = self.full(k)?;
                objects.push(
                    ObjectIdentifier::builder()
                        .key(full)
                        .build()
                        .map_err(|e| BackendError::Other(anyhow::anyhow!("bad key {k}: {e}")))?,
                );
            }
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| BackendError::Other(anyhow::anyhow!("cannot build a delete request: {e}")))?;
            self.counts.delete();
            let out = self
                .block(self.client.delete_objects().bucket(&self.bucket).delete(delete).send())
                .map_err(|e| self.map_err("deleting", &batch[0], e))?;
            if let Some(err) = out.errors().first() {
                return Err(BackendError::Other(anyhow::anyhow!(
                    "S3 could not delete {} of {} objects, {} first ({}: {})",
                    out.errors().len(),
                    batch.len(),
                    err.key().unwrap_or("?"),
                    err.code().unwrap_or("?"),
                    err.message().unwrap_or("")
                )));
            }
        }
        Ok(())
    }

    fn put_if_absent(&self, key: &str, data: &[u8]) -> BResult<PutOutcome> {
        self.put_shared(key, Arc::new(data.to_vec()))
    }

    fn put_shared(&self, key: &str, data: Arc<Vec<u8>>) -> BResult<PutOutcome> {
        let full = self.full(key)?;
        let data = &data;
        self.block(async {
            if data.len() as u64 > self.multipart_threshold {
                if self.conditional.load(Ordering::Relaxed) == COND_NO && self.head(&full, key).await?.is_some() {
                    return Ok(PutOutcome::AlreadyExists);
                }
                return self.put_multipart(&full, key, data.as_slice()).await;
            }
            if self.conditional.load(Ordering::Relaxed) != COND_NO {
                match self.put_plain(&full, key, data, true).await {
                    Err(BackendError::Other(e)) if e.to_string() == "conditional writes not supported" => {
                        if self.conditional.swap(COND_NO, Ordering::Relaxed) != COND_NO {
                            log::warn!(
                                "the S3 server at {} does not support conditional writes (If-None-Match): falling back to HEAD then PUT, which two writers racing for one key can both pass (docs/FORMAT.md §10)",
                                self.endpoint
                            );
                        }
                    }
                    other => {
                        if other.is_ok() {
                            self.conditional.store(COND_YES, Ordering::Relaxed);
                        }
                        return other;
                    }
                }
            }
            if self.head(&full, key).await?.is_some() {
                return Ok(PutOutcome::AlreadyExists);
            }
            self.put_plain(&full, key, data, false).await
        })
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> BResult<Vec<u8>> {
        let full = self.full(key)?;
        if let Some(r) = &range {
            if r.start > r.end {
                return Err(BackendError::Other(anyhow::anyhow!("bad range {}..{} of {key}", r.start, r.end)));
            }
            if r.start == r.end {
                return Ok(Vec::new());
            }
        }
        self.block(async {
            let mut req = self.client.get_object().bucket(&self.bucket).key(&full);
            match &range {
                Some(r) => req = req.range(format!("bytes={}-{}", r.start, r.end - 1)),
                None => req = req.checksum_mode(ChecksumMode::Enabled),
            }
            let out = req.send().await.map_err(|e| {
                self.counts.get(0);
                // A range starting past the end: an error of the caller, not a retry.
                if e.raw_response().map(|r| r.status().as_u16()) == Some(416) {
                    return BackendError::Other(anyhow::anyhow!("range {range:?} is outside object {key}"));
                }
                self.map_err("reading", key, e)
            })?;
            let stored_sum = out.checksum_crc32_c().map(str::to_string);
            // Into a Vec without a second copy when the body came whole.
            let body: Vec<u8> = out
                .body
                .collect()
                .await
                .map_err(|e| BackendError::Transient(anyhow::anyhow!("S3 read of {key} broke off: {e}")))?
                .into_bytes()
                .into();
            self.counts.get(body.len() as u64);
            match &range {
                // Some servers answer a range past the end with what they
                // have: a short body is an error (retried once it passes).
                Some(r) if body.len() as u64 != r.end - r.start => {
                    return Err(BackendError::Other(anyhow::anyhow!(
                        "range {}..{} is outside object {key} (got {} bytes)",
                        r.start,
                        r.end,
                        body.len()
                    )));
                }
                None => {
                    // A multipart object's checksum is composite ("...-N"):
                    // only a plain one can be compared with the body.
                    if let Some(s) = stored_sum.filter(|s| !s.contains('-'))
                        && s != crc32c_b64(&body)
                    {
                        return Err(BackendError::Transient(anyhow::anyhow!(
                            "S3 read of {key} does not match the CRC32C stored with it"
                        )));
                    }
                }
                _ => {}
            }
            Ok(body)
        })
    }

    fn list(&self, prefix: &str) -> BResult<Vec<ObjectInfo>> {
        let full = format!("{}{prefix}", self.prefix);
        self.block(async {
            let mut out = Vec::new();
            let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(&full).into_paginator().send();
            // Counted per page that came back (or failed): the paginator's
            // last `next` sends nothing.
            while let Some(page) = pages.next().await {
                self.counts.list();
                let page = page.map_err(|e| self.map_err("listing", prefix, e))?;
                for o in page.contents() {
                    let Some(k) = o.key().and_then(|k| k.strip_prefix(&self.prefix)) else { continue };
                    out.push(ObjectInfo { key: k.to_string(), size: o.size().unwrap_or(0).max(0) as u64 });
                }
            }
            Ok(out)
        })
    }

    fn stat(&self, key: &str) -> BResult<Option<u64>> {
        let full = self.full(key)?;
        self.block(self.head(&full, key))
    }

    fn delete(&self, key: &str) -> BResult<()> {
        let full = self.full(key)?;
        self.block(async {
            self.counts.delete();
            match self.client.delete_object().bucket(&self.bucket).key(&full).send().await {
                Ok(_) => Ok(()),
                Err(e) => match self.map_err("deleting", key, e) {
                    BackendError::NotFound(_) => Ok(()),
                    other => Err(other),
                },
            }
        })
    }
}

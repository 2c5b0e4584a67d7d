//! The S3 (and S3-compatible) remote target over `object_store`, on a private tokio runtime so
//! that the rest of pra stays synchronous (as the etcd store does). Credentials come from the
//! usual AWS environment variables; they are never logged.

use std::io::{self, Read, Write};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};

use super::{ObjectInfo, RemoteTarget};
use crate::error::{Error, Result};

/// Bytes buffered per multipart part (S3's minimum part size is 5 MiB).
pub const PART_SIZE: usize = 8 << 20;
/// Parts sent at once: one at a time left the link idle between parts (60 MB/s where
/// `aws s3 cp`, with its concurrent parts, did 190 on loopback). The upload's memory footprint
/// is this many parts plus the one being filled.
pub const PARTS_IN_FLIGHT: usize = 4;

/// An `s3://bucket/prefix` target.
pub struct S3Target {
    url: String,
    prefix: String,
    store: AmazonS3,
    rt: tokio::runtime::Runtime,
    pending: Option<std::path::PathBuf>,
}

/// Where and how to reach the S3 target (anything unset comes from the AWS environment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); plain HTTP is allowed only for it.
    pub endpoint: Option<String>,
    /// The region.
    pub region: Option<String>,
    /// Static credentials (access key id, secret), for tools and tests that hold them; pra's
    /// configuration never sets them (they come from the AWS environment).
    pub static_credentials: Option<(String, String)>,
}

impl S3Target {
    /// Opens `s3://bucket[/prefix]`.
    pub fn open(url: &str, opts: &S3Options) -> Result<S3Target> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            Error::InvalidArgument(format!("backup target {url:?}: only s3:// targets exist"))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "backup target {url:?} names no bucket"
            )));
        }
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(e) = &opts.endpoint {
            b = b
                .with_endpoint(e)
                .with_allow_http(e.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let Some(r) = &opts.region {
            b = b.with_region(r);
        }
        if let Some((id, secret)) = &opts.static_credentials {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
        }
        let store = b
            .build()
            .map_err(|e| Error::InvalidArgument(format!("backup target {url}: {e}")))?;
        // Two workers: the parts on their way are sent while the next one is read, hashed and
        // sealed on the calling thread (a current-thread runtime sends only while it waits).
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("tokio runtime: {e}")))?;
        Ok(S3Target {
            url: url.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            store,
            rt,
            pending: None,
        })
    }

    /// Records each multipart upload in progress as a file in `dir` (`<pid>-<n>.upload`: key
    /// and upload id) until it is completed or aborted, so that [`RemoteTarget::cleanup`] can
    /// abort the uploads of a process that was killed (S3 keeps their parts, unlisted, until
    /// aborted or a lifecycle rule expires them).
    pub fn with_pending_dir(mut self, dir: &std::path::Path) -> S3Target {
        self.pending = Some(dir.to_path_buf());
        self
    }

    fn path(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn err(&self, what: &str, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => {
                Error::NotFound(format!("{what} at {}", self.url))
            }
            e => Error::StoreUnavailable {
                url: self.url.clone(),
                reason: format!("{what}: {e}"),
            },
        }
    }
}

/// A part being sent.
type InFlight = tokio::task::JoinHandle<object_store::Result<PartId>>;

/// A multipart upload seen as a `Write`: one part buffered, sent when full, up to
/// [`PARTS_IN_FLIGHT`] parts on their way at once.
struct PartWriter<'a> {
    target: &'a S3Target,
    path: ObjPath,
    id: String,
    /// Parts sent and acknowledged, in order.
    parts: Vec<PartId>,
    /// Parts on their way, oldest first (their index is `parts.len()` onwards).
    sending: std::collections::VecDeque<InFlight>,
    buf: Vec<u8>,
    written: u64,
}

impl PartWriter<'_> {
    /// Sends the buffered part; waits for the oldest one on its way first when
    /// [`PARTS_IN_FLIGHT`] are.
    fn flush_part(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.sending.len() >= PARTS_IN_FLIGHT {
            self.wait_oldest()?;
        }
        let part = std::mem::replace(&mut self.buf, Vec::with_capacity(PART_SIZE));
        let (store, path, id) = (
            self.target.store.clone(),
            self.path.clone(),
            self.id.clone(),
        );
        let index = self.parts.len() + self.sending.len();
        self.sending.push_back(self.target.rt.spawn(async move {
            store
                .put_part(&path, &id, index, PutPayload::from(Bytes::from(part)))
                .await
        }));
        Ok(())
    }

    fn wait_oldest(&mut self) -> io::Result<()> {
        if let Some(oldest) = self.sending.pop_front() {
            let id = self
                .target
                .rt
                .block_on(oldest)
                .map_err(io::Error::other)?
                .map_err(io::Error::other)?;
            self.parts.push(id);
        }
        Ok(())
    }

    /// Sends the last part and waits for every part: the parts, in order.
    fn finish(&mut self) -> io::Result<Vec<PartId>> {
        self.flush_part()?;
        while !self.sending.is_empty() {
            self.wait_oldest()?;
        }
        Ok(std::mem::take(&mut self.parts))
    }
}

impl Drop for PartWriter<'_> {
    /// Parts still on their way when the upload failed are not waited for.
    fn drop(&mut self) {
        for part in self.sending.drain(..) {
            part.abort();
        }
    }
}

impl Write for PartWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(PART_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.written += n as u64;
        if self.buf.len() == PART_SIZE {
            self.flush_part()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether process `pid` still runs (a pending upload of a live process is not ours to abort).
fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for the process's existence.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A download seen as a `Read`.
struct StreamReader<'a> {
    rt: &'a tokio::runtime::Runtime,
    stream: futures_util::stream::BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
}

impl Read for StreamReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rt.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(r) => self.chunk = r.map_err(io::Error::other)?,
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

impl RemoteTarget for S3Target {
    fn url(&self) -> &str {
        &self.url
    }

    fn put(&self, key: &str, fill: &mut dyn FnMut(&mut dyn Write) -> Result<()>) -> Result<u64> {
        let path = self.path(key);
        let id = self
            .rt
            .block_on(self.store.create_multipart(&path))
            .map_err(|e| self.err("start upload", e))?;
        let note = match &self.pending {
            Some(dir) => {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                crate::fsutil::create_private_dir(dir)?;
                let note = dir.join(format!(
                    "{}-{}.upload",
                    std::process::id(),
                    N.fetch_add(1, Ordering::SeqCst)
                ));
                crate::fsutil::write_atomic(
                    &note,
                    format!("{path}\n{id}\n").as_bytes(),
                    crate::fsutil::Sharing::PRIVATE,
                )?;
                Some(note)
            }
            None => None,
        };
        let mut w = PartWriter {
            target: self,
            path: path.clone(),
            id,
            parts: Vec::new(),
            sending: std::collections::VecDeque::new(),
            buf: Vec::with_capacity(PART_SIZE),
            written: 0,
        };
        let done = fill(&mut w).and_then(|()| {
            let parts = w.finish().map_err(|e| Error::StoreUnavailable {
                url: self.url.clone(),
                reason: format!("upload {key}: {e}"),
            })?;
            self.rt
                .block_on(self.store.complete_multipart(&path, &w.id, parts))
                .map_err(|e| self.err("complete upload", e))
        });
        let result = match done {
            Ok(_) => Ok(w.written),
            Err(e) => {
                // No part goes on after this. An incomplete multipart upload is never an object
                // (never listed); aborting it frees its parts now rather than at the bucket's
                // lifecycle rule.
                for part in w.sending.drain(..) {
                    part.abort();
                }
                if let Err(a) = self.rt.block_on(self.store.abort_multipart(&path, &w.id)) {
                    tracing::warn!(key, error = %a, "could not abort the multipart upload");
                }
                Err(e)
            }
        };
        if let Some(note) = note {
            let _ = std::fs::remove_file(note);
        }
        result
    }

    fn cleanup(&self) -> Result<usize> {
        let Some(dir) = &self.pending else {
            return Ok(0);
        };
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Ok(0);
        };
        let mut aborted = 0;
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().to_string();
            let Some(pid) = name
                .strip_suffix(".upload")
                .and_then(|n| n.split('-').next())
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() as i32 || alive(pid) {
                continue;
            }
            let text = std::fs::read_to_string(ent.path()).unwrap_or_default();
            let mut lines = text.lines();
            if let (Some(path), Some(id)) = (lines.next(), lines.next()) {
                match self.rt.block_on(
                    self.store
                        .abort_multipart(&ObjPath::from(path), &id.to_string()),
                ) {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => aborted += 1,
                    Err(e) => {
                        tracing::warn!(key = path, error = %e, "could not abort a dead upload");
                        continue;
                    }
                }
            }
            let _ = std::fs::remove_file(ent.path());
        }
        if aborted > 0 {
            tracing::info!(aborted, "aborted the multipart uploads of dead processes");
        }
        Ok(aborted)
    }

    fn put_small(&self, key: &str, data: &[u8]) -> Result<()> {
        self.rt
            .block_on(
                self.store
                    .put(&self.path(key), PutPayload::from(data.to_vec())),
            )
            .map(|_| ())
            .map_err(|e| self.err("write", e))
    }

    fn get<'a>(&'a self, key: &str) -> Result<Box<dyn Read + Send + 'a>> {
        let r = self
            .rt
            .block_on(self.store.get(&self.path(key)))
            .map_err(|e| self.err(key, e))?;
        Ok(Box::new(StreamReader {
            rt: &self.rt,
            stream: r.into_stream(),
            chunk: Bytes::new(),
        }))
    }

    fn list(&self) -> Result<Vec<ObjectInfo>> {
        let base = if self.prefix.is_empty() {
            None
        } else {
            Some(ObjPath::from(self.prefix.as_str()))
        };
        let all: Vec<_> = self
            .rt
            .block_on(self.store.list(base.as_ref()).collect::<Vec<_>>());
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        all.into_iter()
            .map(|m| {
                let m = m.map_err(|e| self.err("list", e))?;
                let key = m.location.as_ref();
                Ok(ObjectInfo {
                    key: key.strip_prefix(&strip).unwrap_or(key).to_string(),
                    size: m.size,
                })
            })
            .collect()
    }

    fn delete(&self, key: &str) -> Result<()> {
        match self.rt.block_on(self.store.delete(&self.path(key))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", e)),
        }
    }

    fn head(&self, key: &str) -> Result<Option<u64>> {
        match self.rt.block_on(self.store.head(&self.path(key))) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("head", e)),
        }
    }
}

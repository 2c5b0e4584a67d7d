//! The S3 (and S3-compatible) remote target over `object_store`, on a private tokio runtime so
//! that the rest of pra stays synchronous (as the etcd store does). Credentials come from the
//! usual AWS environment variables; they are never logged.

use std::io::{self, Read, Write};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{MultipartUpload, ObjectStore, PutPayload};

use super::{ObjectInfo, RemoteTarget};
use crate::error::{Error, Result};

/// Bytes buffered per multipart part (S3's minimum part size is 5 MiB): the upload's memory
/// footprint is one part.
pub const PART_SIZE: usize = 8 << 20;

/// An `s3://bucket/prefix` target.
pub struct S3Target {
    url: String,
    prefix: String,
    store: AmazonS3,
    rt: tokio::runtime::Runtime,
}

/// Where and how to reach the S3 target (anything unset comes from the AWS environment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); plain HTTP is allowed only for it.
    pub endpoint: Option<String>,
    /// The region.
    pub region: Option<String>,
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
        let store = b
            .build()
            .map_err(|e| Error::InvalidArgument(format!("backup target {url}: {e}")))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("tokio runtime: {e}")))?;
        Ok(S3Target {
            url: url.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            store,
            rt,
        })
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

/// A multipart upload seen as a `Write`: one part buffered, sent when full.
struct PartWriter<'a> {
    target: &'a S3Target,
    upload: Box<dyn MultipartUpload>,
    buf: Vec<u8>,
    written: u64,
}

impl PartWriter<'_> {
    fn flush_part(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let part = std::mem::replace(&mut self.buf, Vec::with_capacity(PART_SIZE));
        let fut = self.upload.put_part(PutPayload::from(Bytes::from(part)));
        self.target.rt.block_on(fut).map_err(io::Error::other)
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
        let upload = self
            .rt
            .block_on(self.store.put_multipart(&path))
            .map_err(|e| self.err("start upload", e))?;
        let mut w = PartWriter {
            target: self,
            upload,
            buf: Vec::with_capacity(PART_SIZE),
            written: 0,
        };
        let done = fill(&mut w).and_then(|()| {
            w.flush_part().map_err(|e| Error::StoreUnavailable {
                url: self.url.clone(),
                reason: format!("upload {key}: {e}"),
            })?;
            self.rt
                .block_on(w.upload.complete())
                .map_err(|e| self.err("complete upload", e))
        });
        match done {
            Ok(_) => Ok(w.written),
            Err(e) => {
                // An incomplete multipart upload is never an object (never listed); aborting it
                // frees its parts now rather than at the bucket's lifecycle rule.
                if let Err(a) = self.rt.block_on(w.upload.abort()) {
                    tracing::warn!(key, error = %a, "could not abort the multipart upload");
                }
                Err(e)
            }
        }
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

//! ipfs://host:port/path: an IPFS node (kubo RPC API), objects in its MFS.

use super::{BResult, Backend, ObjectInfo, PutOutcome};
use std::ops::Range;

pub struct IpfsBackend {}

impl IpfsBackend {
    pub fn open(url: &str) -> anyhow::Result<IpfsBackend> {
        anyhow::bail!("repository URL {url:?}: the IPFS backend is not finished")
    }
}

impl Backend for IpfsBackend {
    fn location(&self) -> String {
        String::new()
    }
    fn put_if_absent(&self, _key: &str, _data: &[u8]) -> BResult<PutOutcome> {
        Err(anyhow::anyhow!("unfinished").into())
    }
    fn get(&self, _key: &str, _range: Option<Range<u64>>) -> BResult<Vec<u8>> {
        Err(anyhow::anyhow!("unfinished").into())
    }
    fn list(&self, _prefix: &str) -> BResult<Vec<ObjectInfo>> {
        Err(anyhow::anyhow!("unfinished").into())
    }
    fn stat(&self, _key: &str) -> BResult<Option<u64>> {
        Err(anyhow::anyhow!("unfinished").into())
    }
    fn delete(&self, _key: &str) -> BResult<()> {
        Err(anyhow::anyhow!("unfinished").into())
    }
}

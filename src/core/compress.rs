//! zstd compression of chunk plaintext, skipped when it does not pay.
//!
//! Every compressed payload starts with a one-byte codec tag so a blob is
//! self-describing even without its pack index.

use anyhow::{Result, bail};

pub const CODEC_STORED: u8 = 0;
pub const CODEC_ZSTD: u8 = 1;

/// The zstd level. Measured with scripts/bench (docs/benchmarks.md): level 2
/// gives the same repository size as restic's default and seals faster
/// than level 3; level 1 costs about 5% in size.
pub const ZSTD_LEVEL: i32 = 2;

thread_local! {
    // A zstd context costs more to create than to compress a small chunk:
    // one per thread, reused (a million small files means a million chunks).
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static PROBE: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

type CompressorCell = std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>>;

fn with_compressor<T>(
    cell: &'static std::thread::LocalKey<CompressorCell>,
    level: i32,
    f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    cell.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Compressor::new(level)?);
        }
        f(c.as_mut().expect("set above"))
    })
}

/// Size of the probe used to detect incompressible data cheaply.
const PROBE_LEN: usize = 64 * 1024;

/// Encode `data` as `codec || payload`.
pub fn compress(data: &[u8]) -> Vec<u8> {
    if data.len() >= 512
        && looks_compressible(data)
        && let Ok(z) = with_compressor(&COMPRESSOR, ZSTD_LEVEL, |c| c.compress(data))
    {
        // Keep compression only when it saves at least 3%.
        if z.len() + z.len() / 32 < data.len() {
            let mut out = Vec::with_capacity(z.len() + 1);
            out.push(CODEC_ZSTD);
            out.extend_from_slice(&z);
            return out;
        }
    }
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(CODEC_STORED);
    out.extend_from_slice(data);
    out
}

/// Compress a small sample at the fastest level: already-compressed media
/// and encrypted files then cost one fast probe instead of a full pass.
fn looks_compressible(data: &[u8]) -> bool {
    if data.len() <= PROBE_LEN * 2 {
        return true;
    }
    let probe = &data[..PROBE_LEN];
    match with_compressor(&PROBE, 1, |c| c.compress(probe)) {
        Ok(z) => z.len() < probe.len() - probe.len() / 16,
        Err(_) => true,
    }
}

/// Decode `codec || payload`. `max_len` bounds the output so a hostile blob
/// cannot make us allocate without limit.
pub fn decompress(data: &[u8], max_len: usize) -> Result<Vec<u8>> {
    let Some((&codec, payload)) = data.split_first() else {
        bail!("empty payload");
    };
    match codec {
        CODEC_STORED => {
            if payload.len() > max_len {
                bail!("stored payload of {} bytes exceeds the limit {max_len}", payload.len());
            }
            Ok(payload.to_vec())
        }
        CODEC_ZSTD => DECOMPRESSOR
            .with(|d| {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    *d = Some(zstd::bulk::Decompressor::new()?);
                }
                d.as_mut().expect("set above").decompress(payload, max_len)
            })
            .map_err(|e| anyhow::anyhow!("zstd payload is corrupt: {e}")),
        other => bail!("unknown codec {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_compresses_random_is_stored() {
        let text = b"all work and no play makes jack a dull boy ".repeat(5000);
        let c = compress(&text);
        assert_eq!(c[0], CODEC_ZSTD);
        assert!(c.len() < text.len() / 10);
        assert_eq!(decompress(&c, text.len()).unwrap(), text);

        let mut random = vec![0u8; 300_000];
        getrandom::fill(&mut random).unwrap();
        let c = compress(&random);
        assert_eq!(c[0], CODEC_STORED);
        assert_eq!(decompress(&c, random.len()).unwrap(), random);
    }

    #[test]
    fn limits_are_enforced() {
        let text = vec![0u8; 100_000];
        let c = compress(&text);
        assert!(decompress(&c, 1000).is_err());
        assert!(decompress(&[], 10).is_err());
        assert!(decompress(&[9, 1, 2], 10).is_err());
    }

    proptest! {
        #[test]
        fn roundtrip(data in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let c = compress(&data);
            prop_assert_eq!(decompress(&c, data.len()).unwrap(), data);
        }

        #[test]
        fn decompress_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decompress(&data, 1 << 20);
        }
    }
}

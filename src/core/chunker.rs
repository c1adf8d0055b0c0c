//! Content-defined chunking (FastCDC 2020), so that an insert in a large file
//! moves only the chunk boundaries near it.
//!
//! Parameters: minimum 256 KiB, average 1 MiB, maximum 4 MiB, normalization
//! level 1, gear table XOR-ed with a seed derived from the master key. The
//! sizes are written into the repository `config` so every writer cuts the
//! same way (dedup depends on it); the seed is never stored.

use serde::{Deserialize, Serialize};
use std::io::Read;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams { min_size: 256 * 1024, avg_size: 1024 * 1024, max_size: 4 * 1024 * 1024 }
    }
}

impl ChunkerParams {
    /// Are these parameters within what FastCDC accepts? A repository config
    /// is outside input, so this is checked before use.
    pub fn validate(&self) -> Result<(), String> {
        use fastcdc::v2020::*;
        let (min, avg, max) = (self.min_size as usize, self.avg_size as usize, self.max_size as usize);
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max
            && min % 2 == 0
            && avg % 2 == 0
            && max % 2 == 0;
        if ok { Ok(()) } else { Err(format!("invalid chunker sizes {min}/{avg}/{max}")) }
    }
}

/// Iterates over the chunks of a reader.
///
/// Holds one buffer of four maximum chunks, whatever the size of the input,
/// and moves leftover bytes to its front only once per refill (fastcdc's own
/// StreamCDC moves its whole buffer after every chunk, which made chunking
/// the bottleneck of a backup). Cut points are those of FastCDC 2020 with
/// the same parameters: each cut looks at no more than `max_size` bytes.
pub struct Chunker<R: Read> {
    reader: R,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    eof: bool,
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
    gear: std::borrow::Cow<'static, [u64]>,
    gear_ls: std::borrow::Cow<'static, [u64]>,
}

impl<R: Read> Chunker<R> {
    pub fn new(reader: R, params: ChunkerParams, seed: u64) -> Self {
        Self::with_buffer(reader, params, seed, Vec::new())
    }

    /// Chunk with a buffer left by an earlier chunker (`into_buffer`), so a
    /// million small files do not each allocate and zero 16 MiB.
    pub fn with_buffer(reader: R, params: ChunkerParams, seed: u64, mut buf: Vec<u8>) -> Self {
        let want = params.max_size as usize * 4;
        if buf.len() != want {
            buf.resize(want, 0);
        }
        let (mask_s, mask_l) =
            fastcdc::v2020::select_masks(params.avg_size as usize, fastcdc::v2020::Normalization::Level1);
        let (gear, gear_ls) = fastcdc::v2020::get_gear_with_seed(seed);
        Chunker { reader, buf, pos: 0, len: 0, eof: false, params, mask_s, mask_l, gear, gear_ls }
    }

    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// The reader back (to look at the file once more), and the buffer.
    pub fn into_parts(self) -> (R, Vec<u8>) {
        (self.reader, self.buf)
    }

    fn refill(&mut self) -> std::io::Result<()> {
        self.buf.copy_within(self.pos..self.len, 0);
        self.len -= self.pos;
        self.pos = 0;
        while !self.eof && self.len < self.buf.len() {
            match self.reader.read(&mut self.buf[self.len..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Vec<u8>>;
    fn next(&mut self) -> Option<Self::Item> {
        let max = self.params.max_size as usize;
        if self.len - self.pos < max
            && !self.eof
            && let Err(e) = self.refill()
        {
            return Some(Err(e));
        }
        if self.pos == self.len {
            return None;
        }
        let (_, count) = fastcdc::v2020::cut_gear(
            &self.buf[self.pos..self.len],
            self.params.min_size as usize,
            self.params.avg_size as usize,
            max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        if count == 0 {
            return None;
        }
        let chunk = self.buf[self.pos..self.pos + count].to_vec();
        self.pos += count;
        Some(Ok(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn cut(data: &[u8], seed: u64) -> Vec<Vec<u8>> {
        Chunker::new(data, ChunkerParams::default(), seed).map(|c| c.unwrap()).collect()
    }

    #[test]
    fn chunks_reassemble_and_respect_bounds() {
        let data = pseudo_random(20 << 20, 1);
        let chunks = cut(&data, 42);
        assert_eq!(chunks.concat(), data);
        let p = ChunkerParams::default();
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= p.min_size as usize && c.len() <= p.max_size as usize);
        }
        let avg = data.len() / chunks.len();
        assert!(avg > 512 * 1024 && avg < 2 * 1024 * 1024, "average {avg}");
    }

    #[test]
    fn an_insert_changes_only_nearby_chunks() {
        let data = pseudo_random(16 << 20, 2);
        let mut edited = data.clone();
        edited.splice(8 << 20..8 << 20, b"inserted bytes".iter().copied());
        let a: std::collections::HashSet<_> = cut(&data, 7).into_iter().collect();
        let b = cut(&edited, 7);
        let new = b.iter().filter(|c| !a.contains(*c)).count();
        assert!(new <= 2, "{new} chunks changed out of {}", b.len());
    }

    #[test]
    fn the_seed_changes_boundaries() {
        let data = pseudo_random(8 << 20, 3);
        let a: Vec<usize> = cut(&data, 1).iter().map(|c| c.len()).collect();
        let b: Vec<usize> = cut(&data, 2).iter().map(|c| c.len()).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn cut_points_match_fastcdc_streaming() {
        // The repository format names FastCDC 2020: our buffering must not move cuts.
        let data = pseudo_random(23 << 20, 9);
        let p = ChunkerParams::default();
        let ours: Vec<usize> = cut(&data, 77).iter().map(|c| c.len()).collect();
        let theirs: Vec<usize> = fastcdc::v2020::StreamCDC::with_level_and_seed(
            &data[..],
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            fastcdc::v2020::Normalization::Level1,
            77,
        )
        .map(|c| c.unwrap().length)
        .collect();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn reads_in_odd_sizes_do_not_move_cuts() {
        struct Trickle<'a>(&'a [u8], usize);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.1 = self.1 % 7919 + 1;
                let n = self.1.min(buf.len()).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let data = pseudo_random(9 << 20, 4);
        let a = cut(&data, 5);
        let b: Vec<Vec<u8>> =
            Chunker::new(Trickle(&data, 0), ChunkerParams::default(), 5).map(|c| c.unwrap()).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn empty_input_has_no_chunks_and_params_validate() {
        assert!(cut(&[], 1).is_empty());
        assert!(ChunkerParams::default().validate().is_ok());
        assert!(ChunkerParams { min_size: 0, avg_size: 10, max_size: 5 }.validate().is_err());
    }
}

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

/// Iterates over the chunks of a reader. Holds at most `max_size` bytes of
/// buffer, whatever the size of the input.
pub struct Chunker<R: Read> {
    inner: fastcdc::v2020::StreamCDC<R>,
}

impl<R: Read> Chunker<R> {
    pub fn new(reader: R, params: ChunkerParams, seed: u64) -> Self {
        Chunker {
            inner: fastcdc::v2020::StreamCDC::with_level_and_seed(
                reader,
                params.min_size as usize,
                params.avg_size as usize,
                params.max_size as usize,
                fastcdc::v2020::Normalization::Level1,
                seed,
            ),
        }
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Vec<u8>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|r| r.map(|c| c.data).map_err(std::io::Error::from))
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
    fn empty_input_has_no_chunks_and_params_validate() {
        assert!(cut(&[], 1).is_empty());
        assert!(ChunkerParams::default().validate().is_ok());
        assert!(ChunkerParams { min_size: 0, avg_size: 10, max_size: 5 }.validate().is_err());
    }
}

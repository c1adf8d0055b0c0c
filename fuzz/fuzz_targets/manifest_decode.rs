//! Manifest decoding on hostile bytes: the record decoder, the sealed
//! segment path (sealed with the fuzz key so decryption passes and the
//! decoder sees the fuzz bytes through the stored/zstd framing), and the
//! sealed JSON header. Never panics; every record that decodes has a safe
//! path; decode -> encode -> decode is the identity.
#![no_main]

use libfuzzer_sys::fuzz_target;
use n2s_agent::core::compress::compress;
use n2s_agent::core::manifest::{
    ManifestHeader, Record, decode_record, decode_records, encode_record, open_segment, seal_segment,
    MANIFEST_FORMAT,
};
use n2s_agent::model::is_safe_rel_path;

#[path = "../common/mod.rs"]
mod common;

/// The header's associated data (private in core::manifest; keep in sync).
use n2s_agent::core::manifest::HEADER_AAD;

fn check_record(r: &Record) {
    assert!(is_safe_rel_path(&r.path), "decoder accepted an unsafe path: {:?}", r.path);
    let mut enc = Vec::new();
    encode_record(r, &mut enc);
    let back = decode_records(&enc).unwrap_or_else(|e| panic!("re-encoded record does not decode: {e:#}: {r:?}"));
    assert_eq!(back.len(), 1, "re-encoded record decodes to {} records", back.len());
    assert_eq!(&back[0], r, "decode -> encode -> decode changed the record");
}

// Seeds: hand-built record bodies in the layout of docs/FORMAT.md
// (length-prefixed), and a valid header JSON.
fn put_u32(o: &mut Vec<u8>, v: u32) {
    o.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(o: &mut Vec<u8>, v: u64) {
    o.extend_from_slice(&v.to_le_bytes());
}
fn body(kind: u8, path: &[u8], ftype: u8, symlink: Option<&[u8]>, xattrs: &[(&[u8], &[u8])], hash: bool, chunks: u32) -> Vec<u8> {
    let mut b = vec![kind];
    put_u32(&mut b, path.len() as u32);
    b.extend_from_slice(path);
    if kind == 4 {
        return b; // removal: kind and path only
    }
    b.push(ftype);
    put_u32(&mut b, 0o644);
    put_u32(&mut b, 1000);
    put_u32(&mut b, 1000);
    put_u64(&mut b, 4096);
    put_u64(&mut b, 1_700_000_000_000_000_000);
    put_u64(&mut b, 1_700_000_000_000_000_000);
    put_u64(&mut b, 42);
    put_u64(&mut b, 1);
    put_u64(&mut b, 0);
    match symlink {
        Some(t) => {
            put_u32(&mut b, t.len() as u32);
            b.extend_from_slice(t);
        }
        None => put_u32(&mut b, u32::MAX),
    }
    put_u32(&mut b, xattrs.len() as u32);
    for (k, v) in xattrs {
        put_u32(&mut b, k.len() as u32);
        b.extend_from_slice(k);
        put_u32(&mut b, v.len() as u32);
        b.extend_from_slice(v);
    }
    if hash {
        b.push(1);
        b.extend_from_slice(&[0xab; 32]);
    } else {
        b.push(0);
    }
    put_u32(&mut b, chunks);
    for i in 0..chunks {
        b.extend_from_slice(&[i as u8; 32]);
    }
    b
}
fn framed(bodies: &[Vec<u8>]) -> Vec<u8> {
    let mut o = Vec::new();
    for b in bodies {
        put_u32(&mut o, b.len() as u32);
        o.extend_from_slice(b);
    }
    o
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let file = body(1, b"home/a.txt", 1, None, &[(b"user.x", b"1")], true, 2);
    let dir = body(0, b"home", 2, None, &[], false, 0);
    let root = body(0, b"", 2, None, &[], false, 0);
    let link = body(3, b"home/l", 3, Some(b"../etc/passwd"), &[], false, 0);
    let gone = body(4, b"home/old", 0, None, &[], false, 0);
    let header = br#"{"format":1,"dataset":"home","seq":3,"changeset":"0123abcd","parent":"00ff","kind":"delta","snapshot":{"name":"s3","source":"walk","identity":{"label":"s3"}},"method":"walk","started_at":1700000000,"completed_at":1700000100,"counts":{"added":1,"modified":2,"metadata":0,"removed":1,"failed":0},"bytes_changed":4096,"bytes_uploaded":8192,"segments":[{"key":"segments/abc","records":5}]}"#;
    let many = framed(&[root.clone(), dir.clone(), file.clone(), link.clone(), gone.clone()]);
    vec![
        ("records", many.clone()),
        ("records-zstd-sized", many.repeat(12)),
        ("record-file", file),
        ("record-symlink", link),
        ("record-removed", gone),
        ("header-json", header.to_vec()),
        ("empty", Vec::new()),
    ]
}

fuzz_target!(init: common::write_seeds(seeds), |data: &[u8]| {
    let s = common::sealer();

    // The plain record stream and a single record body.
    let plain = decode_records(data);
    if let Ok(recs) = &plain {
        recs.iter().for_each(check_record);
    }
    if let Ok(r) = decode_record(data) {
        check_record(&r);
    }

    // Through a segment sealed with the key: same answer as the plain decode.
    let sealed = seal_segment(s, data);
    match (open_segment(s, &sealed), &plain) {
        (Ok(a), Ok(b)) => assert_eq!(&a, b, "open_segment(seal_segment(x)) != decode_records(x)"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "open_segment(seal_segment(x)) and decode_records(x) disagree: {:?} vs {:?}",
            a.map(|v| v.len()).map_err(|e| format!("{e:#}")),
            b.as_ref().map(|v| v.len()).map_err(|e| format!("{e:#}"))
        ),
    }

    // Unsealed garbage where sealed objects are expected.
    let _ = open_segment(s, data);
    let _ = ManifestHeader::open(s, data);

    // The header JSON, sealed with the key.
    let sealed_header = s.seal(HEADER_AAD, &compress(data));
    if let Ok(h) = ManifestHeader::open(s, &sealed_header) {
        assert_eq!(h.format, MANIFEST_FORMAT);
        let again = h.seal(s).expect("a decoded header must seal again");
        let h2 = ManifestHeader::open(s, &again).expect("a re-sealed header must open");
        assert_eq!(h2, h, "header JSON round trip changed it");
    }
});

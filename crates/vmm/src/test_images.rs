//! Disk contents the tests of storage and the image store share (here and
//! in `crates/cli/tests`): deterministic, incompressible, with holes.

use std::os::unix::fs::FileExt;
use std::path::Path;

/// `len` deterministic bytes that do not compress (xorshift64).
pub fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes a 16 MiB raw image with data, a hole between and a hole at the
/// end: `[0, 1 MiB)` noise, `[1, 9 MiB)` hole, `[9, 10 MiB)` noise,
/// `[10, 16 MiB)` hole. Returns its contents.
pub fn sparse_raw(path: &Path) -> Vec<u8> {
    let f = std::fs::File::create(path).unwrap();
    let data = noise(2 << 20);
    f.write_all_at(&data[..1 << 20], 0).unwrap();
    f.write_all_at(&data[1 << 20..], 9 << 20).unwrap();
    f.set_len(16 << 20).unwrap();
    f.sync_all().unwrap();
    std::fs::read(path).unwrap()
}

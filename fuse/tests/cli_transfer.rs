//! `cffs put` and `cffs get` as a user runs them, against `cffs-server dev` (six processes:
//! three replicas that are also block group 1, three block servers as group 2): from and to
//! files and standard input and output, the summary line and `--quiet`, and the errors for a
//! missing local or remote file.
#![cfg(not(madsim))]

mod common;

use common::{cffs, start_dev};

fn pattern(len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| (i.wrapping_mul(0x9E37_79B9) >> 13) as u8).collect()
}

#[test]
fn put_and_get_stream_files_and_standard_streams() {
    let dev = start_dev();
    let local = tempfile::tempdir().expect("temp dir");
    let data = pattern(40 << 20);
    let src = local.path().join("src.bin");
    std::fs::write(&src, &data).expect("write the source");

    // From a file, with the summary on stderr.
    let put = cffs(&dev, &["put", src.to_str().unwrap(), "/big"], None);
    let said = String::from_utf8_lossy(&put.stderr);
    assert!(put.status.success(), "put failed: {said}");
    assert!(said.contains("put 40.00 MiB (41943040 bytes)") && said.contains("/s"), "{said}");
    // To a file.
    let out = local.path().join("out.bin");
    let get = cffs(&dev, &["get", "/big", out.to_str().unwrap()], None);
    assert!(get.status.success(), "get failed: {}", String::from_utf8_lossy(&get.stderr));
    assert!(std::fs::read(&out).expect("read the copy") == data, "the copy differs");
    // From standard input, quietly; to standard output.
    let piped = cffs(&dev, &["put", "--quiet", "-", "/piped"], Some(&data[..5_000_000]));
    assert!(piped.status.success() && piped.stderr.is_empty(), "{}", String::from_utf8_lossy(&piped.stderr));
    let back = cffs(&dev, &["get", "--quiet", "/piped", "-"], None);
    assert!(back.status.success() && back.stdout == data[..5_000_000], "standard output differs");
    let ls = cffs(&dev, &["ls", "-l", "/"], None);
    assert!(String::from_utf8_lossy(&ls.stdout).contains("41943040"), "{}", String::from_utf8_lossy(&ls.stdout));

    // Errors: clear, exit status 1, nothing written.
    let missing = cffs(&dev, &["put", "/no/such/local/file", "/x"], None);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read '/no/such/local/file'"));
    let absent = cffs(&dev, &["get", "/absent", out.to_str().unwrap()], None);
    assert_eq!(absent.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&absent.stderr).contains("No such file or directory"));
    assert!(std::fs::read(&out).expect("read the copy") == data, "a failed get left the local file alone");
    let status = cffs(&dev, &["cluster", "status"], None);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("group 2:") && text.contains("scrubber") && text.contains("collector"), "{text}");
}

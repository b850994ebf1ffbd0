//! The same behaviour checks for every backend.

use super::*;

fn backends() -> Vec<(Backend, tempfile::TempDir)> {
    [Backend::Memory, Backend::Redb, Backend::Sled].into_iter().map(|b| (b, tempfile::tempdir().unwrap())).collect()
}

#[test]
fn put_get_delete_roundtrip_on_every_backend() {
    for (backend, dir) in backends() {
        let kv = open(backend, dir.path()).unwrap();
        let mut b = WriteBatch::new();
        b.put(b"a".to_vec(), b"1".to_vec()).put(b"b".to_vec(), b"2".to_vec());
        kv.write(b).unwrap();
        assert_eq!(kv.get(b"a").unwrap(), Some(b"1".to_vec()), "{backend}");
        let mut b = WriteBatch::new();
        b.delete(b"a".to_vec());
        kv.write(b).unwrap();
        assert_eq!(kv.get(b"a").unwrap(), None, "{backend}");
        assert_eq!(kv.get(b"b").unwrap(), Some(b"2".to_vec()), "{backend}");
    }
}

#[test]
fn scan_last_and_range_delete_respect_bounds() {
    for (backend, dir) in backends() {
        let kv = open(backend, dir.path()).unwrap();
        let mut b = WriteBatch::new();
        for i in 0u8..10 {
            b.put(vec![b'k', i], vec![i]);
        }
        b.put(b"z".to_vec(), b"outside".to_vec());
        kv.write(b).unwrap();

        let got = kv.scan(&[b'k', 2], &[b'k', 5]).unwrap();
        assert_eq!(got.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(), vec![2, 3, 4], "{backend}");
        assert_eq!(kv.last(b"k", b"l").unwrap().unwrap().1, vec![9], "{backend}");
        assert_eq!(kv.last(b"x", b"y").unwrap(), None, "{backend}");
        assert!(kv.scan(b"l", b"k").unwrap().is_empty(), "{backend}: inverted range");

        let mut b = WriteBatch::new();
        b.delete_range(vec![b'k', 3], vec![b'k', 8]);
        kv.write(b).unwrap();
        let left: Vec<u8> = kv.scan(b"k", b"l").unwrap().iter().map(|(_, v)| v[0]).collect();
        assert_eq!(left, vec![0, 1, 2, 8, 9], "{backend}");
        assert_eq!(kv.get(b"z").unwrap(), Some(b"outside".to_vec()), "{backend}");
    }
}

#[test]
fn durable_backends_keep_data_across_reopen() {
    for backend in [Backend::Redb, Backend::Sled] {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = open(backend, dir.path()).unwrap();
            let mut b = WriteBatch::new();
            b.put(b"k".to_vec(), b"v".to_vec());
            kv.write(b).unwrap();
        }
        let kv = open(backend, dir.path()).unwrap();
        assert_eq!(kv.get(b"k").unwrap(), Some(b"v".to_vec()), "{backend}");
    }
}

#[test]
fn backend_names_parse_and_print() {
    for b in [Backend::Redb, Backend::Sled, Backend::Memory] {
        assert_eq!(b.to_string().parse::<Backend>().unwrap(), b);
    }
    let err = "rocks".parse::<Backend>().unwrap_err();
    assert!(err.contains("rocks"), "{err}");
}

/// The log writer groups an append and a truncation (or purge) into one batch: a range
/// delete must remove what the same batch put before it, and not what it puts after.
#[test]
fn a_range_delete_applies_to_what_the_same_batch_put_before_it() {
    for (backend, dir) in backends() {
        let kv = open(backend, dir.path()).unwrap();
        let mut b = WriteBatch::new();
        b.put(b"k1".to_vec(), b"old".to_vec());
        kv.write(b).unwrap();
        let mut b = WriteBatch::new();
        b.put(b"k2".to_vec(), b"x".to_vec())
            .put(b"k3".to_vec(), b"x".to_vec())
            .delete_range(b"k1".to_vec(), b"k9".to_vec())
            .put(b"k3".to_vec(), b"new".to_vec());
        kv.write_lazy(b).unwrap();
        assert_eq!(kv.get(b"k1").unwrap(), None, "{backend}: stored before");
        assert_eq!(kv.get(b"k2").unwrap(), None, "{backend}: put earlier in the batch");
        assert_eq!(kv.get(b"k3").unwrap(), Some(b"new".to_vec()), "{backend}: put after the delete");
    }
}

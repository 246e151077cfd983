//! `etcd-inspect`: reads etcd values (live or from a bbolt backup file) and
//! classifies each as plaintext or under which provider and key. (Being written.)

//! Debian's librocksdb.a was built with these compression libraries and gflags; linking RocksDB
//! statically (ROCKSDB_STATIC in .cargo/config.toml) needs them too, statically, so the binary
//! runs on hosts without them (the node agent's machines).
fn main() {
    println!("cargo:rerun-if-env-changed=ROCKSDB_STATIC");
    if std::env::var_os("ROCKSDB_STATIC").is_some() {
        for lib in ["snappy", "gflags", "lz4", "zstd", "bz2", "z"] {
            println!("cargo:rustc-link-lib=static={lib}");
        }
    }
}

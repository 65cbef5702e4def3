//! Compiles the exchange protocol with protox (pure Rust), so that a fresh
//! machine builds with cargo alone: no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/qianzhi/exchange/v1/exchange.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        // Ordered maps: no hashing on the hot path, and the same record
        // always encodes to the same bytes.
        .btree_map(".")
        // An entry's record is a slice of the received message, not a copy:
        // the hub checks it in place and stores it as it came.
        .bytes(".qianzhi.exchange.v1.Entry.record")
        // Its entries' records are slices of the decompressed buffer in turn.
        .bytes(".qianzhi.exchange.v1.Batch.zstd_entries")
        .build_client(true)
        .build_server(true)
        // No `connect` helper: callers bring their own channel, so the
        // protocol crate needs no tonic transport (the hub builds no client).
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}

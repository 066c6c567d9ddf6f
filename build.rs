//! Compiles `proto/tidings/v1/*.proto` and the LeanCloud dialect's
//! `proto/leancloud/messages2.proto` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/tidings/v1/model.proto",
        "proto/tidings/v1/frames.proto",
        "proto/tidings/v1/store.proto",
        "proto/leancloud/messages2.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let mut config = prost_build::Config::new();
    // Both packages: LeanCloud's `binaryMsg` fields become `Bytes` too; it has no maps.
    config.bytes(["."]);
    config.btree_map(["."]);
    config.compile_fds(fds)?;
    Ok(())
}

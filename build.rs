//! Compiles `proto/tidings/v1/*.proto` and the LeanCloud dialect's
//! `proto/leancloud/messages2.proto` with protox (pure Rust), so no system `protoc` is needed,
//! and generates the proto3 JSON mapping of the `tidings.v1` types (serde impls, by pbjson-build)
//! for the JSON form of the native protocol.

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
    config.compile_fds(fds.clone())?;
    // The JSON form: field names in lowerCamelCase (either spelling is accepted), enums by
    // name, 64-bit integers as strings, bytes in base64. Unknown fields are skipped, as the
    // binary form skips them, so a newer client's extra fields do not break an older server.
    let mut json = pbjson_build::Builder::new();
    for file in fds.file {
        // The wire's files only: the store's records never travel as JSON.
        if file.name().ends_with("frames.proto") || file.name().ends_with("model.proto") {
            json.register_file_descriptor(file);
        }
    }
    json.btree_map(["."])
        .ignore_unknown_fields()
        .ignore_unknown_enum_variants()
        .build(&[".tidings.v1"])?;
    Ok(())
}

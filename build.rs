//! Compiles `proto/tidings/v1/*.proto` and the LeanCloud dialect's
//! `proto/leancloud/messages2.proto` with protox (pure Rust), so no system `protoc` is needed,
//! and generates the proto3 JSON mapping of the `tidings.v1` types (serde impls, by pbjson-build)
//! for the JSON form of the native protocol. Also embeds the built browser pages of `web/dist/`
//! (served in demo mode, see `src/demo.rs`): a table of their paths and bytes, so building the
//! binary needs no node.

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
    embed_web_pages()?;
    Ok(())
}

/// Writes `$OUT_DIR/web_assets.rs`: `ASSETS`, every file under `web/dist/` as (path relative to
/// it, with `/`; its bytes), sorted by path.
fn embed_web_pages() -> Result<(), Box<dyn std::error::Error>> {
    use std::path::{Path, PathBuf};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("web/dist");
    println!("cargo:rerun-if-changed=web/dist");
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(&root)?;
                let rel: Vec<_> = rel.iter().map(|c| c.to_string_lossy()).collect();
                files.push((rel.join("/"), path));
            }
        }
    }
    files.sort();
    let mut out = String::from("pub static ASSETS: &[(&str, &[u8])] = &[\n");
    for (rel, path) in &files {
        out.push_str(&format!(
            "    ({rel:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR")?).join("web_assets.rs");
    std::fs::write(dest, out)?;
    Ok(())
}

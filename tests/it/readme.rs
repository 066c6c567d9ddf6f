//! The README's Rust quick start, compiled: `quick_start` holds the README's block line for
//! line, and a test checks that the two stay the same.

use tidings::client::ClientError;

/// Type-checked, never run (it connects to a fixed address and reads pushes forever).
#[allow(dead_code)]
async fn quick_start(token: String) -> Result<(), ClientError> {
    // README quick start begins
    use tidings::client::Client;

    let mut alice = Client::connect("ws://127.0.0.1:7400/ws").await?;
    alice.login(&token, "phone", 0).await?; // token, device tag, event cursor
    let team = alice.create_group("team", &["bob", "carol"]).await?;
    let ack = alice.send_text(&team.id, "hello").await?; // durable when this returns
    println!("seq {} id {}", ack.seq, ack.message_id);
    while let Some(push) = alice.next_push().await {
        println!("{:?}", push.body); // messages, events, read positions
    }
    // README quick start ends
    Ok(())
}

/// Lines without indentation, and with comments after code separated by one space.
fn normalized(code: &str) -> Vec<String> {
    code.trim_end()
        .lines()
        .map(|l| match l.split_once(" //") {
            Some((code, comment)) if !code.trim().is_empty() => {
                format!("{} //{comment}", code.trim())
            }
            _ => l.trim().to_owned(),
        })
        .collect()
}

#[test]
fn the_readme_quick_start_is_the_code_compiled_here() {
    let readme = include_str!("../../README.md");
    let block = readme
        .split("From Rust, the crate's client does the protocol for you:\n\n```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README.md has the quick start block");
    let here = include_str!("readme.rs");
    let begin = concat!("// README quick start ", "begins\n");
    let end = concat!("// README quick start ", "ends");
    let code = here
        .split(begin)
        .nth(1)
        .and_then(|rest| rest.split(end).next())
        .expect("the markers are here");
    assert_eq!(normalized(block), normalized(code));
}

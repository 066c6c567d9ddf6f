//! Group control from the admin API: roles, ownership, muting, mute-all, the blacklist, user
//! blocks and profiles, each checked by what members' WebSocket clients see.

use crate::admin::{admin_server, api, ok};
use crate::harness::*;
use serde_json::json;
use tidings::client::Client;
use tidings::protocol::pb::{self, ConversationEventKind as Ev, ErrorCode, MemberRole};

/// The next conversation event of `kind`, skipping other pushes.
async fn event_of(c: &mut Client, want: Ev) -> pb::ConversationEvent {
    loop {
        if let pb::server_frame::Body::ConversationEvent(e) = push(c).await
            && e.kind == want as i32
        {
            return e;
        }
    }
}

fn role_in(list: &pb::MemberList, user: &str) -> MemberRole {
    let info = list.infos.iter().find(|i| i.user_id == user).unwrap();
    MemberRole::try_from(info.role).unwrap()
}

#[tokio::test]
async fn the_backend_promotes_transfers_mutes_and_blocks_without_being_a_member() {
    let server = admin_server().await;
    let alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let mut carol = server.client("carol").await;
    let id = within(alice.create_group("team", &["bob", "carol", "dave"]))
        .await
        .unwrap()
        .id;

    // Roles: the backend outranks the owner; `by` names it in the events.
    let c = ok(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/roles?by=ops"),
        Some(json!({"members": ["bob"], "role": "manager"})),
    )
    .await;
    assert_eq!(c["id"], id.as_str());
    let e = event_of(&mut bob, Ev::RoleChanged).await;
    assert_eq!(
        (e.by.as_str(), e.members.clone()),
        ("ops", vec!["bob".into()])
    );
    let members = within(alice.list_members(&id, "", 0)).await.unwrap();
    assert_eq!(role_in(&members, "bob"), MemberRole::Manager);
    let r = api(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/roles"),
        Some(json!({"members": ["bob"], "role": "owner"})),
    )
    .await;
    assert_eq!((r.status, r.body["code"].clone()), (400, json!(2)));

    // Ownership.
    let c = ok(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/owner"),
        Some(json!({"new_owner": "carol"})),
    )
    .await;
    assert_eq!(c["owner"], "carol");
    let e = event_of(&mut carol, Ev::OwnerChanged).await;
    assert_eq!(
        e.by, "system",
        "the default name of the backend: system_sender"
    );

    // Timed mute: the member's send is refused; the list shows the deadline.
    ok(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/mutes"),
        Some(json!({"members": ["dave"], "duration_secs": 600})),
    )
    .await;
    let dave = server.client("dave").await;
    let refused = within(dave.send_text(&id, "hi")).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::ErrorMuted));
    let page = ok(
        &server,
        "GET",
        &format!("/v1/conversations/{id}/mutes"),
        None,
    )
    .await;
    assert_eq!(page["members"][0]["user_id"], "dave");
    assert_eq!(page["members"][0]["role"], "member");
    assert_eq!(
        page["members"][0]["muted_until"],
        server.clock_now() + 600_000
    );
    ok(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/mutes/remove"),
        Some(json!({"members": ["dave"]})),
    )
    .await;
    within(dave.send_text(&id, "free again")).await.unwrap();
    let r = api(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/mutes"),
        Some(json!({"members": ["dave"], "duration_secs": 100_000_000})),
    )
    .await;
    assert_eq!((r.status, r.body["code"].clone()), (422, json!(3)));

    // Mute-all: only the owner and managers speak.
    let c = ok(
        &server,
        "PUT",
        &format!("/v1/conversations/{id}/mute-all"),
        Some(json!({"muted": true})),
    )
    .await;
    assert_eq!(c["id"], id.as_str());
    let refused = within(dave.send_text(&id, "hi")).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::ErrorMuted));
    within(bob.send_text(&id, "a manager speaks"))
        .await
        .unwrap();
    ok(
        &server,
        "PUT",
        &format!("/v1/conversations/{id}/mute-all"),
        Some(json!({"muted": false})),
    )
    .await;
    within(dave.send_text(&id, "everyone again")).await.unwrap();

    // The blacklist: a blocked member is removed and cannot be added back.
    ok(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/blacklist"),
        Some(json!({"members": ["dave", "mallory"]})),
    )
    .await;
    let page = ok(
        &server,
        "GET",
        &format!("/v1/conversations/{id}/blacklist?limit=1"),
        None,
    )
    .await;
    assert_eq!(page["users"], json!(["dave"]));
    assert_eq!(page["has_more"], true);
    let next = page["next_cursor"].as_str().unwrap();
    let page = ok(
        &server,
        "GET",
        &format!("/v1/conversations/{id}/blacklist?limit=1&cursor={next}"),
        None,
    )
    .await;
    assert_eq!(page["users"], json!(["mallory"]));
    let refused = within(carol.add_members(&id, &["dave"])).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::ErrorBlacklisted));
    // The owner cannot be blocked, not even by the backend.
    let r = api(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/blacklist"),
        Some(json!({"members": ["carol"]})),
    )
    .await;
    assert_eq!((r.status, r.body["code"].clone()), (403, json!(7)));
    ok(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/blacklist/remove"),
        Some(json!({"members": ["dave"]})),
    )
    .await;
    within(carol.add_members(&id, &["dave"])).await.unwrap();

    // Unknown conversations and bad `by` are typed errors.
    let r = api(&server, "GET", "/v1/conversations/c:nope/mutes", None).await;
    assert_eq!(r.status, 404);
    let r = api(
        &server,
        "GET",
        &format!("/v1/conversations/{id}/mutes?by=%20"),
        None,
    )
    .await;
    assert_eq!((r.status, r.body["code"].clone()), (400, json!(2)));
    // Direct conversations have no roles.
    let direct = within(alice.create_direct("bob")).await.unwrap().id;
    let r = api(
        &server,
        "POST",
        &format!("/v1/conversations/{direct}/mutes"),
        Some(json!({"members": ["bob"]})),
    )
    .await;
    assert_eq!((r.status, r.body["code"].clone()), (409, json!(8)));
}

#[tokio::test]
async fn the_backend_blocks_for_a_user_and_sets_profiles_that_reach_the_right_people() {
    let server = admin_server().await;
    let alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let mut outsider = server.client("outsider").await;
    let direct = within(alice.create_direct("bob")).await.unwrap().id;

    // alice blocks bob, by the backend: bob's direct messages are refused.
    ok(
        &server,
        "POST",
        "/v1/users/alice/blocks",
        Some(json!({"user_id": "bob"})),
    )
    .await;
    let refused = within(bob.send_text(&direct, "hi")).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::ErrorBlocked));
    let page = ok(&server, "GET", "/v1/users/alice/blocks", None).await;
    assert_eq!(page["users"][0]["user_id"], "bob");
    assert_eq!(page["users"][0]["blocked_at"], server.clock_now());
    ok(&server, "DELETE", "/v1/users/alice/blocks/bob", None).await;
    within(bob.send_text(&direct, "hi again")).await.unwrap();
    assert_eq!(
        ok(&server, "GET", "/v1/users/alice/blocks", None).await["users"],
        json!([])
    );

    // The backend sets alice's profile: bob (who shares a conversation) is told, the
    // outsider is not.
    let p = ok(
        &server,
        "PATCH",
        "/v1/users/alice/profile",
        Some(json!({"display_name": "Alice", "set_fields": {"title": "CEO"}})),
    )
    .await;
    assert_eq!(p["display_name"], "Alice");
    assert_eq!(p["fields"], json!({"title": "CEO"}));
    loop {
        if let pb::server_frame::Body::ProfileChanged(c) = push(&mut bob).await {
            let profile = c.profile.unwrap();
            assert_eq!(
                (profile.user_id.as_str(), profile.display_name.as_str()),
                ("alice", "Alice")
            );
            break;
        }
    }
    assert_no_push(&mut outsider).await;
    let p = ok(&server, "GET", "/v1/users/alice/profile", None).await;
    assert_eq!(p["fields"]["title"], "CEO");
    let got = within(bob.get_profiles(&["alice"])).await.unwrap();
    assert_eq!(got[0].display_name, "Alice");
    // Over a limit: nothing stored.
    let long = "x".repeat(200);
    let r = api(
        &server,
        "PATCH",
        "/v1/users/alice/profile",
        Some(json!({"display_name": long})),
    )
    .await;
    assert_eq!((r.status, r.body["code"].clone()), (422, json!(3)));
    let p = ok(&server, "GET", "/v1/users/alice/profile", None).await;
    assert_eq!(p["display_name"], "Alice");
}

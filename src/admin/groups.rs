//! Group control from the app's backend: roles and ownership, muting and mute-all, the
//! blacklist, user blocks and profiles. Each endpoint is one call into the registry method the
//! WebSocket requests use, with the backend as the caller ([`Caller::admin`]): it outranks
//! every role and need not be a member; `by` (default `admin`) names it in the events.
//! User blocks act for the user named in the path, as if they had asked. System conversations
//! are created and broadcast to by the backend alone.

use super::json::{self, Conversation};
use super::{Answer, Call, ErrorBody, Failure, NO_SESSION, ok};
use crate::protocol::pb::{self, MemberRole};
use crate::registry::Caller;
use crate::registry::conversation::CreateRequest;
use crate::registry::users::ProfileUpdate;
use hyper::Method;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// This module's endpoints; `None` when the path is not one of them.
pub(super) async fn route(call: &Call<'_>, method: &Method, path: &[&str]) -> Option<Answer> {
    Some(match (method, path) {
        (&Method::POST, ["conversations", id, "roles"]) => set_roles(call, id).await,
        (&Method::POST, ["conversations", id, "owner"]) => transfer(call, id).await,
        (&Method::GET, ["conversations", id, "mutes"]) => list_mutes(call, id).await,
        (&Method::POST, ["conversations", id, "mutes"]) => mute(call, id).await,
        (&Method::POST, ["conversations", id, "mutes", "remove"]) => unmute(call, id).await,
        (&Method::PUT, ["conversations", id, "mute-all"]) => mute_all(call, id).await,
        (&Method::GET, ["conversations", id, "blacklist"]) => list_blacklist(call, id).await,
        (&Method::POST, ["conversations", id, "blacklist"]) => block(call, id).await,
        (&Method::POST, ["conversations", id, "blacklist", "remove"]) => unblock(call, id).await,
        (&Method::GET, ["users", user, "blocks"]) => list_user_blocks(call, user).await,
        (&Method::POST, ["users", user, "blocks"]) => block_user(call, user).await,
        (&Method::DELETE, ["users", user, "blocks", other]) => {
            unblock_user(call, user, other).await
        }
        (&Method::GET, ["users", user, "profile"]) => profile(call, user).await,
        (&Method::PATCH, ["users", user, "profile"]) => set_profile(call, user).await,
        (&Method::POST, ["system-conversations"]) => create_system(call).await,
        (&Method::POST, ["system-conversations", id, "messages"]) => broadcast(call, id).await,
        _ => return None,
    })
}

fn role_name(role: MemberRole) -> &'static str {
    match role {
        MemberRole::Owner => "owner",
        MemberRole::Manager => "manager",
        MemberRole::Member => "member",
    }
}

/// `POST /v1/conversations/{id}/roles`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRoles {
    pub members: Vec<String>,
    /// `manager` or `member` (ownership moves with `POST …/owner`).
    pub role: String,
}

/// `POST /v1/conversations/{id}/owner`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    pub new_owner: String,
}

/// `POST /v1/conversations/{id}/mutes`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Mute {
    pub members: Vec<String>,
    /// 0 or absent: until lifted; else at most `max_mute_secs`.
    #[serde(default)]
    pub duration_secs: u64,
}

/// `PUT /v1/conversations/{id}/mute-all`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MuteAll {
    pub muted: bool,
}

/// `POST /v1/users/{user}/blocks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockUser {
    pub user_id: String,
}

/// `PATCH /v1/users/{user}/profile`: absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePatch {
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    /// Merged into the custom fields.
    #[serde(default)]
    pub set_fields: BTreeMap<String, String>,
    #[serde(default)]
    pub remove_fields: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MutedMember {
    pub user_id: String,
    /// `owner`, `manager` or `member`.
    pub role: &'static str,
    /// Muted until (ms); 9223372036854775807: until lifted.
    pub muted_until: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MutedPage {
    pub members: Vec<MutedMember>,
    pub next_cursor: String,
    pub has_more: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BlacklistPage {
    pub users: Vec<String>,
    pub next_cursor: String,
    pub has_more: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BlockedUser {
    pub user_id: String,
    /// When (ms).
    pub blocked_at: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BlockedUserPage {
    pub users: Vec<BlockedUser>,
    pub next_cursor: String,
    pub has_more: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Profile {
    pub user_id: String,
    pub display_name: String,
    pub avatar_url: String,
    pub fields: BTreeMap<String, String>,
    /// When it last changed (ms); 0: never set.
    pub updated_at: i64,
}

impl From<pb::Profile> for Profile {
    fn from(p: pb::Profile) -> Self {
        Profile {
            user_id: p.user_id,
            display_name: p.display_name,
            avatar_url: p.avatar_url,
            fields: p.fields.into_iter().collect(),
            updated_at: p.updated_at,
        }
    }
}

/// Makes members managers or plain members again (at most `max_managers`). All or nothing.
#[utoipa::path(post, path = "/v1/conversations/{id}/roles", request_body = SetRoles,
    params(("id" = String, Path), ("by" = Option<String>, Query, description = "who acts, in events (default system_sender)")),
    responses((status = 200, body = json::Conversation), (status = 400, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn set_roles(call: &Call<'_>, id: &str) -> Answer {
    let body: SetRoles = call.json()?;
    let role = match body.role.as_str() {
        "manager" => MemberRole::Manager,
        "member" => MemberRole::Member,
        _ => return Err(Failure::invalid("role must be manager or member")),
    };
    let o = call
        .app
        .registry
        .set_member_role(&call.backend()?, id, &body.members, role)
        .await?;
    ok(Conversation::from(o.conversation))
}

/// Hands a group to another member; the former owner becomes a plain member.
#[utoipa::path(post, path = "/v1/conversations/{id}/owner", request_body = Transfer,
    params(("id" = String, Path), ("by" = Option<String>, Query)),
    responses((status = 200, body = json::Conversation), (status = 400, body = ErrorBody)))]
pub(super) async fn transfer(call: &Call<'_>, id: &str) -> Answer {
    let body: Transfer = call.json()?;
    ok(Conversation::from(
        call.app
            .registry
            .transfer_ownership(&call.backend()?, id, &body.new_owner)
            .await?,
    ))
}

/// Mutes members for `duration_secs` (0: until lifted). All or nothing.
#[utoipa::path(post, path = "/v1/conversations/{id}/mutes", request_body = Mute,
    params(("id" = String, Path), ("by" = Option<String>, Query)),
    responses((status = 200, body = json::Conversation), (status = 422, body = ErrorBody)))]
pub(super) async fn mute(call: &Call<'_>, id: &str) -> Answer {
    let body: Mute = call.json()?;
    let o = call
        .app
        .registry
        .mute_members(
            &call.backend()?,
            id,
            &body.members,
            body.duration_secs,
            false,
        )
        .await?;
    ok(Conversation::from(o.conversation))
}

/// Lifts members' mutes.
#[utoipa::path(post, path = "/v1/conversations/{id}/mutes/remove", request_body = json::Members,
    params(("id" = String, Path), ("by" = Option<String>, Query)),
    responses((status = 200, body = json::Conversation)))]
pub(super) async fn unmute(call: &Call<'_>, id: &str) -> Answer {
    let body: json::Members = call.json()?;
    let o = call
        .app
        .registry
        .unmute_members(&call.backend()?, id, &body.members, false)
        .await?;
    ok(Conversation::from(o.conversation))
}

/// The members muted now, by user id, a page at a time.
#[utoipa::path(get, path = "/v1/conversations/{id}/mutes",
    params(("id" = String, Path), ("cursor" = Option<String>, Query),
        ("limit" = Option<u32>, Query)),
    responses((status = 200, body = MutedPage)))]
pub(super) async fn list_mutes(call: &Call<'_>, id: &str) -> Answer {
    let (by, id) = (call.backend()?, id.to_owned());
    let (cursor, limit) = (
        call.param("cursor").unwrap_or_default(),
        call.number("limit", 0)?,
    );
    super::blocking_page(call.app, move |app| {
        let (members, next_cursor, has_more) =
            app.registry.list_muted_members(&by, &id, &cursor, limit)?;
        ok(MutedPage {
            members: members
                .into_iter()
                .map(|m| MutedMember {
                    role: role_name(MemberRole::try_from(m.role).unwrap_or(MemberRole::Member)),
                    user_id: m.user_id,
                    muted_until: m.muted_until,
                })
                .collect(),
            next_cursor,
            has_more,
        })
    })
    .await
}

/// Switches mute-all: while on, only the owner and managers may send.
#[utoipa::path(put, path = "/v1/conversations/{id}/mute-all", request_body = MuteAll,
    params(("id" = String, Path), ("by" = Option<String>, Query)),
    responses((status = 200, body = json::Conversation)))]
pub(super) async fn mute_all(call: &Call<'_>, id: &str) -> Answer {
    let body: MuteAll = call.json()?;
    ok(Conversation::from(
        call.app
            .registry
            .set_mute_all(&call.backend()?, id, body.muted)
            .await?,
    ))
}

/// Puts users on the group's blacklist; members among them are removed. All or nothing.
#[utoipa::path(post, path = "/v1/conversations/{id}/blacklist", request_body = json::Members,
    params(("id" = String, Path), ("by" = Option<String>, Query)),
    responses((status = 200, body = json::Conversation), (status = 422, body = ErrorBody)))]
pub(super) async fn block(call: &Call<'_>, id: &str) -> Answer {
    let body: json::Members = call.json()?;
    let o = call
        .app
        .registry
        .block_members(&call.backend()?, id, &body.members, false)
        .await?;
    ok(Conversation::from(o.conversation))
}

/// Takes users off the group's blacklist (they do not become members again).
#[utoipa::path(post, path = "/v1/conversations/{id}/blacklist/remove",
    request_body = json::Members, params(("id" = String, Path), ("by" = Option<String>, Query)),
    responses((status = 200, body = json::Conversation)))]
pub(super) async fn unblock(call: &Call<'_>, id: &str) -> Answer {
    let body: json::Members = call.json()?;
    let o = call
        .app
        .registry
        .unblock_members(&call.backend()?, id, &body.members)
        .await?;
    ok(Conversation::from(o.conversation))
}

/// The group's blacklist, by user id, a page at a time.
#[utoipa::path(get, path = "/v1/conversations/{id}/blacklist",
    params(("id" = String, Path), ("cursor" = Option<String>, Query),
        ("limit" = Option<u32>, Query)),
    responses((status = 200, body = BlacklistPage)))]
pub(super) async fn list_blacklist(call: &Call<'_>, id: &str) -> Answer {
    let (by, id) = (call.backend()?, id.to_owned());
    let (cursor, limit) = (
        call.param("cursor").unwrap_or_default(),
        call.number("limit", 0)?,
    );
    super::blocking_page(call.app, move |app| {
        let (users, next_cursor, has_more) = app
            .registry
            .list_blocked_members(&by, &id, &cursor, limit)?;
        ok(BlacklistPage {
            users,
            next_cursor,
            has_more,
        })
    })
    .await
}

fn as_user(call: &Call<'_>, user: &str) -> Result<Caller, Failure> {
    call.app.registry.check_user_id(user)?;
    Ok(Caller::user(user.into(), NO_SESSION))
}

/// `user` blocks `user_id`: no new direct conversation from them, their direct messages refused.
#[utoipa::path(post, path = "/v1/users/{user}/blocks", request_body = BlockUser,
    params(("user" = String, Path)),
    responses((status = 200, body = json::Empty), (status = 422, body = ErrorBody)))]
pub(super) async fn block_user(call: &Call<'_>, user: &str) -> Answer {
    let body: BlockUser = call.json()?;
    call.app
        .registry
        .block_user(&as_user(call, user)?, &body.user_id)
        .await?;
    ok(json::Empty {})
}

/// `user` unblocks `other` (no-op when not blocked).
#[utoipa::path(delete, path = "/v1/users/{user}/blocks/{other}",
    params(("user" = String, Path), ("other" = String, Path)),
    responses((status = 200, body = json::Empty)))]
pub(super) async fn unblock_user(call: &Call<'_>, user: &str, other: &str) -> Answer {
    call.app
        .registry
        .unblock_user(&as_user(call, user)?, other)
        .await?;
    ok(json::Empty {})
}

/// Whom `user` blocks, a page at a time.
#[utoipa::path(get, path = "/v1/users/{user}/blocks",
    params(("user" = String, Path), ("cursor" = Option<String>, Query),
        ("limit" = Option<u32>, Query)),
    responses((status = 200, body = BlockedUserPage)))]
pub(super) async fn list_user_blocks(call: &Call<'_>, user: &str) -> Answer {
    let caller = as_user(call, user)?;
    let (cursor, limit) = (
        call.param("cursor").unwrap_or_default(),
        call.number("limit", 0)?,
    );
    super::blocking_page(call.app, move |app| {
        let (users, next_cursor, has_more) =
            app.registry.list_blocked_users(&caller, &cursor, limit)?;
        ok(BlockedUserPage {
            users: users
                .into_iter()
                .map(|u| BlockedUser {
                    user_id: u.user_id,
                    blocked_at: u.blocked_at,
                })
                .collect(),
            next_cursor,
            has_more,
        })
    })
    .await
}

/// A user's profile (empty, `updated_at` 0, when never set).
#[utoipa::path(get, path = "/v1/users/{user}/profile", params(("user" = String, Path)),
    responses((status = 200, body = Profile)))]
pub(super) async fn profile(call: &Call<'_>, user: &str) -> Answer {
    call.app.registry.check_user_id(user)?;
    let user = user.to_owned();
    super::blocking_page(call.app, move |app| {
        ok(Profile::from(app.registry.profile_of(&user)?))
    })
    .await
}

/// Changes a user's profile as the backend; pushed as `ProfileChanged` like the user's own
/// change.
#[utoipa::path(patch, path = "/v1/users/{user}/profile", request_body = ProfilePatch,
    params(("user" = String, Path), ("by" = Option<String>, Query)),
    responses((status = 200, body = Profile), (status = 422, body = ErrorBody)))]
pub(super) async fn set_profile(call: &Call<'_>, user: &str) -> Answer {
    let body: ProfilePatch = call.json()?;
    let update = ProfileUpdate {
        display_name: body.display_name,
        avatar_url: body.avatar_url,
        set_fields: body.set_fields,
        remove_fields: body.remove_fields,
    };
    ok(Profile::from(
        call.app
            .registry
            .set_profile(&call.backend()?, user, update)
            .await?,
    ))
}

/// `POST /v1/system-conversations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSystem {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// Creates a system conversation (a service account's channel): users subscribe with
/// `JoinConversation` (LeanCloud `subscribe()`), and only the backend sends.
#[utoipa::path(post, path = "/v1/system-conversations", request_body = CreateSystem,
    params(("by" = Option<String>, Query)),
    responses((status = 201, body = json::Conversation), (status = 422, body = ErrorBody)))]
pub(super) async fn create_system(call: &Call<'_>) -> Answer {
    let body: CreateSystem = call.json()?;
    let req = CreateRequest {
        kind: pb::ConversationKind::System,
        name: body.name,
        attributes: body.attributes,
        ..Default::default()
    };
    let c = call.app.registry.create(&call.backend()?, req).await?;
    let (_, value) = ok(Conversation::from(c))?;
    Ok((hyper::StatusCode::CREATED, value))
}

/// Broadcasts to a system conversation's subscribers as `by`: stored as history, answered once
/// durable; a retry with the same `client_message_id` gets the first answer.
#[utoipa::path(post, path = "/v1/system-conversations/{id}/messages",
    request_body = json::SendMessage, params(("id" = String, Path), ("by" = Option<String>, Query)),
    responses((status = 200, body = json::SendAck), (status = 403, body = ErrorBody)))]
pub(super) async fn broadcast(call: &Call<'_>, id: &str) -> Answer {
    let req = super::api::send_request(call)?;
    let ack = call
        .app
        .registry
        .send_to_system(&call.backend()?, id, req)
        .await?;
    super::api::ack_json(ack)
}

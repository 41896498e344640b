//! Groups: creation (up to 100 participants, all existing users), info, members and admin rules,
//! and the system messages members see when the group changes.
//!
//! Rules: only admins add or remove others, promote, demote and edit the info; anyone may leave;
//! when the last admin leaves, the longest-standing remaining member becomes admin; the last admin
//! cannot be demoted; when the last member leaves, the group and its history are deleted. Member
//! lists change by compare-and-set, retried, so concurrent changes never lose one another or pass
//! the 100 cap. System message content is JSON naming users by id (`{"event": ..., ...}`).

use messaging::model::{Conversation, ConversationKind, MAX_GROUP_PARTICIPANTS};
use messaging::system_messages::post_system_message;
use messaging::{Error, ErrorCode, Result};
use serde_json::json;

use crate::Api;
use crate::accounts::{require_account, valid_name};
use crate::conversations::{Names, membership};
use crate::views::{
    AddParticipantsRequest, CreateGroupRequest, ErrorBody, GroupView, ParticipantList,
    ParticipantView, PromoteRequest, UpdateGroupRequest, ms,
};
use axum::extract::State;
use messaging::http::{Caller, Json, Path, Reply};

/// Attempts of a compare-and-set before giving up with `conflict`.
const CAS_ATTEMPTS: usize = 8;

/// Posts a system message about a group change. The change is already stored, so a failure here
/// is logged, not returned: members still get the message from history.
pub(crate) async fn announce(api: &Api, conversation: &Conversation, event: serde_json::Value) {
    let key = format!("group/{}", uuid::Uuid::new_v4());
    if let Err(e) = post_system_message(&api.ctx, conversation, &key, &event.to_string()).await {
        tracing::warn!(
            conversation_id = %conversation.conversation_id,
            error = %e,
            "group system message not posted"
        );
    }
}

fn valid_description(description: &str) -> Result<String> {
    let description = description.trim();
    if description.chars().count() > 1000 {
        return Err(Error::invalid(
            "description must be at most 1000 characters",
        ));
    }
    Ok(description.to_string())
}

fn cap_error(count: usize) -> Error {
    Error::client(
        messaging::ErrorCode::Conflict,
        format!("a group has at most {MAX_GROUP_PARTICIPANTS} participants ({count} requested)"),
    )
}

/// Fails unless every id is an existing user.
async fn require_users(api: &Api, ids: &[String]) -> Result<()> {
    let found = api.ctx.store.users_by_ids(ids).await?;
    let unknown: Vec<&str> = ids
        .iter()
        .filter(|id| !found.iter().any(|u| &u.user_id == *id))
        .map(String::as_str)
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = unknown.iter().take(10).copied().collect();
    Err(Error::not_found(format!(
        "{} participant(s) are not users: {}{}",
        unknown.len(),
        shown.join(", "),
        if unknown.len() > shown.len() {
            ", ..."
        } else {
            ""
        }
    )))
}

/// The group `conversation_id` of which `user_id` is a member.
async fn group_of(api: &Api, conversation_id: &str, user_id: &str) -> Result<Conversation> {
    let mc = membership(api, conversation_id, user_id).await?;
    if mc.conversation.kind != ConversationKind::Group {
        return Err(Error::not_found("this conversation is not a group"));
    }
    Ok(mc.conversation)
}

fn require_admin(group: &Conversation, user_id: &str, what: &str) -> Result<()> {
    if group.admins.iter().any(|a| a == user_id) {
        Ok(())
    } else {
        Err(Error::forbidden(format!("only group admins can {what}")))
    }
}

async fn participants_view(api: &Api, group: &Conversation) -> Result<Vec<ParticipantView>> {
    let names = Names::load(api, group.participants.clone(), Vec::new()).await?;
    Ok(group
        .participants
        .iter()
        .map(|p| ParticipantView {
            user_id: p.clone(),
            name: names.name(p).map(str::to_string),
            avatar_url: names.avatar(p),
            role: role_of(group, p).into(),
        })
        .collect())
}

fn role_of(group: &Conversation, user_id: &str) -> &'static str {
    if group.admins.iter().any(|a| a == user_id) {
        "admin"
    } else {
        "member"
    }
}

async fn group_view(api: &Api, group: &Conversation, user_id: &str) -> Result<GroupView> {
    Ok(GroupView {
        conversation_id: group.conversation_id.clone(),
        name: group.name.clone().unwrap_or_default(),
        description: group.description.clone(),
        created_at: ms(group.created_at),
        participants: participants_view(api, group).await?,
        your_role: role_of(group, user_id).into(),
    })
}

/// Applies `change` to the group's member lists by compare-and-set, re-reading and retrying
/// when someone else changed them first. `change` sees the current group and returns the new
/// participants and admins, or `None` for "nothing to do".
async fn change_members<F>(
    api: &Api,
    conversation_id: &str,
    user_id: &str,
    mut change: F,
) -> Result<Option<Conversation>>
where
    F: FnMut(&Conversation) -> Result<Option<(Vec<String>, Vec<String>)>>,
{
    for _ in 0..CAS_ATTEMPTS {
        let group = group_of(api, conversation_id, user_id).await?;
        let Some((participants, admins)) = change(&group)? else {
            return Ok(None);
        };
        if api
            .ctx
            .store
            .replace_group_members(
                &group.conversation_id,
                &group.participants,
                &group.admins,
                &participants,
                &admins,
            )
            .await?
        {
            // Membership is cached for the messaging functions: this change must reach them.
            messaging::conversations::changed(&api.ctx, &group.conversation_id).await?;
            return Ok(Some(Conversation {
                participants,
                admins,
                ..group
            }));
        }
    }
    Err(Error::client(
        ErrorCode::Conflict,
        "the group kept changing meanwhile; retry",
    ))
}

/// Create a group; the creator is its first admin.
#[utoipa::path(
    operation_id = "createGroup",
    post, path = "/v1/groups", tag = "groups", security(("bearer" = [])),
    request_body = CreateGroupRequest,
    responses(
        (status = 201, description = "The group", body = GroupView),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 404, description = "Some participants are not users", body = ErrorBody),
        (status = 409, description = "No participant but the caller", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    State(ref api): State<Api>,
    caller: Caller,
    Json(request): Json<CreateGroupRequest>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    let name = valid_name(&request.name, "name")?;
    let description = request
        .description
        .as_deref()
        .map(valid_description)
        .transpose()?
        .filter(|d| !d.is_empty());
    let mut participants = vec![user_id.to_string()];
    for p in &request.participants {
        if !participants.contains(p) {
            participants.push(p.clone());
        }
    }
    if participants.len() > MAX_GROUP_PARTICIPANTS {
        return Err(cap_error(participants.len()));
    }
    if participants.len() < 2 {
        return Err(Error::client(
            messaging::ErrorCode::Conflict,
            "a group needs at least one other participant",
        ));
    }
    require_account(api, user_id).await?;
    require_users(api, &participants[1..]).await?;
    let group = Conversation {
        admins: vec![user_id.to_string()],
        name: Some(name.clone()),
        description,
        ..Conversation::new(
            uuid::Uuid::new_v4().to_string(),
            ConversationKind::Group,
            participants,
        )
    };
    api.ctx.store.insert_conversation(&group).await?;
    announce(
        api,
        &group,
        json!({
            "event": "group_created",
            "actor": user_id,
            "name": name,
            "users": &group.participants[1..],
        }),
    )
    .await;
    Reply::json(201, &group_view(api, &group, user_id).await?)
}

/// A group with its members (members only).
#[utoipa::path(
    operation_id = "getGroup",
    get, path = "/v1/groups/{conversation_id}", tag = "groups", security(("bearer" = [])),
    params(("conversation_id" = String, Path, description = "The group")),
    responses(
        (status = 200, description = "The group", body = GroupView),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "Not a member", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
    )
)]
pub(crate) async fn get(
    State(ref api): State<Api>,
    caller: Caller,
    Path(conversation_id): Path<String>,
) -> Result<Reply> {
    let group = group_of(api, conversation_id.as_str(), caller.user_id()?).await?;
    Reply::ok(&group_view(api, &group, caller.user_id()?).await?)
}

/// Rename or describe a group (admins only).
#[utoipa::path(
    operation_id = "updateGroup",
    patch, path = "/v1/groups/{conversation_id}", tag = "groups", security(("bearer" = [])),
    params(("conversation_id" = String, Path, description = "The group")),
    request_body = UpdateGroupRequest,
    responses(
        (status = 200, description = "The group as updated", body = GroupView),
        (status = 400, description = "Bad name or description", body = ErrorBody),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
    )
)]
pub(crate) async fn update(
    State(ref api): State<Api>,
    caller: Caller,
    Path(conversation_id): Path<String>,
    Json(request): Json<UpdateGroupRequest>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    let name = request
        .name
        .as_deref()
        .map(|n| valid_name(n, "name"))
        .transpose()?;
    let description = match &request.description {
        Some(Some(d)) => Some(Some(valid_description(d)?).filter(|d| !d.is_empty())),
        Some(None) => Some(None),
        None => None,
    };
    let group = group_of(api, conversation_id.as_str(), caller.user_id()?).await?;
    require_admin(&group, user_id, "change the group's info")?;
    api.ctx
        .store
        .update_group_info(
            &group.conversation_id,
            name.as_deref(),
            description.as_ref().map(|d| d.as_deref()),
        )
        .await?;
    let group = group_of(api, conversation_id.as_str(), caller.user_id()?).await?;
    if name.is_some() || description.is_some() {
        announce(
            api,
            &group,
            json!({
                "event": "group_updated",
                "actor": user_id,
                "name": name,
                "description_changed": description.is_some(),
            }),
        )
        .await;
    }
    Reply::ok(&group_view(api, &group, user_id).await?)
}

/// The members of a group, in joining order, with roles (members only).
#[utoipa::path(
    operation_id = "listParticipants",
    get, path = "/v1/groups/{conversation_id}/participants", tag = "groups", security(("bearer" = [])),
    params(("conversation_id" = String, Path, description = "The group")),
    responses(
        (status = 200, description = "The members", body = ParticipantList),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "Not a member", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
    )
)]
pub(crate) async fn participants(
    State(ref api): State<Api>,
    caller: Caller,
    Path(conversation_id): Path<String>,
) -> Result<Reply> {
    let group = group_of(api, conversation_id.as_str(), caller.user_id()?).await?;
    Reply::ok(&ParticipantList {
        participants: participants_view(api, &group).await?,
    })
}

/// Add users to a group (admins only; all must exist; at most 100 members).
#[utoipa::path(
    operation_id = "addParticipants",
    post, path = "/v1/groups/{conversation_id}/participants", tag = "groups", security(("bearer" = [])),
    params(("conversation_id" = String, Path, description = "The group")),
    request_body = AddParticipantsRequest,
    responses(
        (status = 200, description = "The members after the change", body = ParticipantList),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such group, or some of the users do not exist", body = ErrorBody),
        (status = 409, description = "The group would pass 100 members, or it kept changing (retry)", body = ErrorBody),
    )
)]
pub(crate) async fn add_participants(
    State(ref api): State<Api>,
    caller: Caller,
    Path(conversation_id): Path<String>,
    Json(request): Json<AddParticipantsRequest>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    let mut wanted: Vec<String> = Vec::new();
    for id in request.user_ids {
        if !wanted.contains(&id) {
            wanted.push(id);
        }
    }
    if wanted.is_empty() {
        return Err(Error::invalid("user_ids must name at least one user"));
    }
    if wanted.len() > MAX_GROUP_PARTICIPANTS {
        return Err(cap_error(wanted.len()));
    }
    let first = group_of(api, conversation_id.as_str(), caller.user_id()?).await?;
    require_admin(&first, user_id, "add participants")?;
    require_users(api, &wanted).await?;
    let mut added = Vec::new();
    let changed = change_members(api, conversation_id.as_str(), user_id, |group| {
        require_admin(group, user_id, "add participants")?;
        added = wanted
            .iter()
            .filter(|w| !group.has_participant(w))
            .cloned()
            .collect();
        if added.is_empty() {
            return Ok(None);
        }
        let total = group.participants.len() + added.len();
        if total > MAX_GROUP_PARTICIPANTS {
            return Err(cap_error(total));
        }
        let mut participants = group.participants.clone();
        participants.extend(added.iter().cloned());
        Ok(Some((participants, group.admins.clone())))
    })
    .await?;
    let group = match changed {
        Some(group) => {
            announce(
                api,
                &group,
                json!({"event": "participants_added", "actor": user_id, "users": added}),
            )
            .await;
            group
        }
        None => group_of(api, conversation_id.as_str(), caller.user_id()?).await?,
    };
    Reply::ok(&ParticipantList {
        participants: participants_view(api, &group).await?,
    })
}

/// Removes `leaver` from the group by their own choice, promoting the longest-standing member when
/// they were the last admin, deleting the group when they were the last member.
pub(crate) async fn leave_group(
    api: &Api,
    conversation_id: &str,
    leaver: &str,
    event: serde_json::Value,
) -> Result<()> {
    let mut promoted = None;
    let mut emptied = None;
    let changed = change_members(api, conversation_id, leaver, |group| {
        let participants: Vec<String> = group
            .participants
            .iter()
            .filter(|p| *p != leaver)
            .cloned()
            .collect();
        let mut admins: Vec<String> = group
            .admins
            .iter()
            .filter(|a| *a != leaver)
            .cloned()
            .collect();
        promoted = None;
        emptied = None;
        if participants.is_empty() {
            emptied = Some(group.conversation_id.clone());
            return Ok(None);
        }
        if admins.is_empty() {
            promoted = Some(participants[0].clone());
            admins.push(participants[0].clone());
        }
        Ok(Some((participants, admins)))
    })
    .await?;
    if let Some(conversation_id) = emptied {
        api.ctx
            .store
            .delete_conversation_data(&conversation_id)
            .await?;
        messaging::conversations::changed(&api.ctx, &conversation_id).await?;
        return Ok(());
    }
    if let Some(group) = changed {
        announce(api, &group, event).await;
        if let Some(p) = promoted {
            announce(
                api,
                &group,
                json!({"event": "admin_promoted", "actor": "system", "user": p}),
            )
            .await;
        }
    }
    Ok(())
}

/// Remove a member (admins only), or yourself (= leave).
#[utoipa::path(
    operation_id = "removeParticipant",
    delete, path = "/v1/groups/{conversation_id}/participants/{user_id}", tag = "groups", security(("bearer" = [])),
    params(
        ("conversation_id" = String, Path, description = "The group"),
        ("user_id" = String, Path, description = "The member to remove"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such group or member", body = ErrorBody),
        (status = 409, description = "The group kept changing; retry", body = ErrorBody),
    )
)]
pub(crate) async fn remove_participant(
    State(ref api): State<Api>,
    caller: Caller,
    Path((conversation_id, target)): Path<(String, String)>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    if target == user_id {
        leave_group(
            api,
            &conversation_id,
            user_id,
            json!({"event": "participant_left", "user": user_id}),
        )
        .await?;
        return Reply::no_content();
    }
    let changed = change_members(api, conversation_id.as_str(), user_id, |group| {
        require_admin(group, user_id, "remove participants")?;
        if !group.has_participant(&target) {
            return Err(Error::not_found(format!(
                "{target} is not a member of this group"
            )));
        }
        Ok(Some((
            group
                .participants
                .iter()
                .filter(|p| **p != target)
                .cloned()
                .collect(),
            group
                .admins
                .iter()
                .filter(|a| **a != target)
                .cloned()
                .collect(),
        )))
    })
    .await?;
    if let Some(group) = changed {
        announce(
            api,
            &group,
            json!({"event": "participant_removed", "actor": user_id, "user": target}),
        )
        .await;
    }
    Reply::no_content()
}

/// Leave a group.
#[utoipa::path(
    operation_id = "leaveGroup",
    post, path = "/v1/groups/{conversation_id}/leave", tag = "groups", security(("bearer" = [])),
    params(("conversation_id" = String, Path, description = "The group")),
    responses(
        (status = 204, description = "Left (the last admin leaving promotes the longest-standing member)"),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "Not a member", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
    )
)]
pub(crate) async fn leave(
    State(ref api): State<Api>,
    caller: Caller,
    Path(conversation_id): Path<String>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    leave_group(
        api,
        conversation_id.as_str(),
        user_id,
        json!({"event": "participant_left", "user": user_id}),
    )
    .await?;
    Reply::no_content()
}

/// Make a member admin (admins only).
#[utoipa::path(
    operation_id = "promoteAdmin",
    post, path = "/v1/groups/{conversation_id}/admins", tag = "groups", security(("bearer" = [])),
    params(("conversation_id" = String, Path, description = "The group")),
    request_body = PromoteRequest,
    responses(
        (status = 200, description = "The members after the change", body = ParticipantList),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such group or member", body = ErrorBody),
    )
)]
pub(crate) async fn promote(
    State(ref api): State<Api>,
    caller: Caller,
    Path(conversation_id): Path<String>,
    Json(request): Json<PromoteRequest>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    let target = request.user_id;
    let changed = change_members(api, conversation_id.as_str(), user_id, |group| {
        require_admin(group, user_id, "promote members")?;
        if !group.has_participant(&target) {
            return Err(Error::not_found(format!(
                "{target} is not a member of this group"
            )));
        }
        if group.admins.contains(&target) {
            return Ok(None);
        }
        let mut admins = group.admins.clone();
        admins.push(target.clone());
        Ok(Some((group.participants.clone(), admins)))
    })
    .await?;
    let group = match changed {
        Some(group) => {
            announce(
                api,
                &group,
                json!({"event": "admin_promoted", "actor": user_id, "user": target}),
            )
            .await;
            group
        }
        None => group_of(api, conversation_id.as_str(), caller.user_id()?).await?,
    };
    Reply::ok(&ParticipantList {
        participants: participants_view(api, &group).await?,
    })
}

/// Make an admin a plain member again (admins only; never the last admin).
#[utoipa::path(
    operation_id = "demoteAdmin",
    delete, path = "/v1/groups/{conversation_id}/admins/{user_id}", tag = "groups", security(("bearer" = [])),
    params(
        ("conversation_id" = String, Path, description = "The group"),
        ("user_id" = String, Path, description = "The admin to demote"),
    ),
    responses(
        (status = 200, description = "The members after the change", body = ParticipantList),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such group or admin", body = ErrorBody),
        (status = 409, description = "It is the last admin", body = ErrorBody),
    )
)]
pub(crate) async fn demote(
    State(ref api): State<Api>,
    caller: Caller,
    Path((conversation_id, target)): Path<(String, String)>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    let changed = change_members(api, conversation_id.as_str(), user_id, |group| {
        require_admin(group, user_id, "demote admins")?;
        if !group.admins.contains(&target) {
            return Err(Error::not_found(format!(
                "{target} is not an admin of this group"
            )));
        }
        if group.admins.len() == 1 {
            return Err(Error::client(
                ErrorCode::Conflict,
                "a group needs an admin: promote someone else first",
            ));
        }
        Ok(Some((
            group.participants.clone(),
            group
                .admins
                .iter()
                .filter(|a| **a != target)
                .cloned()
                .collect(),
        )))
    })
    .await?;
    let group = match changed {
        Some(group) => {
            announce(
                api,
                &group,
                json!({"event": "admin_demoted", "actor": user_id, "user": target}),
            )
            .await;
            group
        }
        None => group_of(api, conversation_id.as_str(), caller.user_id()?).await?,
    };
    Reply::ok(&ParticipantList {
        participants: participants_view(api, &group).await?,
    })
}

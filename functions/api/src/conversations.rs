//! Conversations: start 1:1 and agent conversations (one per pair), the list with previews,
//! unread counts, pinning, archiving, search and cursor pagination, delete for me, and history.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use base64::Engine;
use messaging::model::{Conversation, ConversationKind, MemberConversation, MemberStateUpdate};
use messaging::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Api;
use crate::accounts::{Contact, require_account};
use crate::views::{
    ArchivedFilter, ConversationListQuery, ConversationPage, ConversationView,
    CreateConversationRequest, ErrorBody, HistoryQuery, LastMessageView, MessagePage, MessageView,
    Peer, UpdateConversationRequest, given, ms, wire_name,
};
use axum::extract::State;
use messaging::http::{Caller, Json, Path, Query, Reply};

/// Default and largest page of the conversation list.
const LIST_PAGE: (usize, usize) = (20, 100);
/// Default and largest page of history.
const HISTORY_PAGE: (usize, usize) = (50, 200);

/// Names and avatars of users and agents, by id.
#[derive(Default)]
pub(crate) struct Names(
    HashMap<String, (String, Option<String>)>,
    /// Agents among those looked up that hold device keys (their conversations are encrypted).
    HashSet<String>,
);

impl Names {
    /// Looks up every id in `ids` (users, then agents among `agent_ids`).
    pub(crate) async fn load(
        api: &Api,
        ids: impl IntoIterator<Item = String>,
        agent_ids: impl IntoIterator<Item = String>,
    ) -> Result<Self> {
        let ids: Vec<String> = ids
            .into_iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut names = HashMap::new();
        for user in api.ctx.store.users_by_ids(&ids).await? {
            names.insert(user.user_id.clone(), (user.name, user.avatar_url));
        }
        let agent_ids: HashSet<String> = agent_ids.into_iter().collect();
        let agents =
            futures::future::join_all(agent_ids.iter().map(|a| api.ctx.store.agent(a))).await;
        for agent in agents {
            if let Some(agent) = agent? {
                names.insert(agent.agent_id.clone(), (agent.name, agent.avatar_url));
            }
        }
        let keys =
            futures::future::join_all(agent_ids.iter().map(|a| api.ctx.store.device_keys_of(a)))
                .await;
        let mut keyed = HashSet::new();
        for (agent, devices) in agent_ids.iter().zip(keys) {
            if !devices?.is_empty() {
                keyed.insert(agent.clone());
            }
        }
        Ok(Self(names, keyed))
    }

    /// Whether messages in `conversation` are end-to-end encrypted: always between people;
    /// with an agent, when the agent holds device keys.
    pub(crate) fn encrypted(&self, conversation: &Conversation) -> bool {
        match conversation.kind {
            ConversationKind::Direct | ConversationKind::Group => true,
            ConversationKind::Agent => conversation
                .agent_id
                .as_ref()
                .is_some_and(|agent| self.1.contains(agent)),
        }
    }

    pub(crate) fn name(&self, id: &str) -> Option<&str> {
        self.0.get(id).map(|(n, _)| n.as_str())
    }

    pub(crate) fn avatar(&self, id: &str) -> Option<String> {
        self.0.get(id).and_then(|(_, a)| a.clone())
    }
}

/// The other party of a 1:1 or agent conversation.
fn peer<'a>(conversation: &'a Conversation, user_id: &'a str) -> Option<&'a str> {
    match conversation.kind {
        ConversationKind::Group => None,
        ConversationKind::Agent => conversation
            .agent_id
            .as_deref()
            .or_else(|| conversation.recipients_of(user_id).next()),
        ConversationKind::Direct => conversation.recipients_of(user_id).next(),
    }
}

fn title(conversation: &Conversation, user_id: &str, names: &Names) -> String {
    match peer(conversation, user_id) {
        None => conversation.name.clone().unwrap_or_else(|| "Group".into()),
        Some(p) => names.name(p).map(str::to_string).unwrap_or_else(|| {
            if conversation.kind == ConversationKind::Agent {
                p.to_string()
            } else {
                "Deleted user".into()
            }
        }),
    }
}

fn activity_ms(conversation: &Conversation) -> i64 {
    conversation
        .last_message_at
        .map(ms)
        .unwrap_or_else(|| ms(conversation.created_at))
}

/// The caller's view of one conversation.
pub(crate) fn view(mc: &MemberConversation, user_id: &str, names: &Names) -> ConversationView {
    let c = &mc.conversation;
    ConversationView {
        conversation_id: c.conversation_id.clone(),
        kind: wire_name(&c.kind),
        title: title(c, user_id, names),
        avatar_url: peer(c, user_id).and_then(|p| names.avatar(p)),
        participants: c.participants.clone(),
        admins: c.admins.clone(),
        agent_id: c.agent_id.clone(),
        description: c.description.clone(),
        created_at: ms(c.created_at),
        last_activity_at: activity_ms(c),
        last_sequence_number: c.last_sequence_number,
        last_message: c.last_message.as_ref().map(LastMessageView::from),
        unread_count: mc.state.unread(c, user_id),
        pinned: mc.state.pinned,
        archived: mc.state.archived,
        cleared_up_to: mc.state.cleared_up_to,
        end_to_end_encrypted: names.encrypted(c),
    }
}

/// Position in the list: pinned first, then newest activity first, then by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ListKey {
    #[serde(rename = "p")]
    pinned: bool,
    #[serde(rename = "a")]
    activity: i64,
    #[serde(rename = "i")]
    id: String,
}

impl ListKey {
    fn of(mc: &MemberConversation) -> Self {
        Self {
            pinned: mc.state.pinned,
            activity: activity_ms(&mc.conversation),
            id: mc.conversation.conversation_id.clone(),
        }
    }

    fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(self).unwrap_or_default())
    }

    fn decode(cursor: &str) -> Result<Self> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| Error::invalid("cursor is not one this API returned"))
    }
}

impl Ord for ListKey {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .pinned
            .cmp(&self.pinned)
            .then(other.activity.cmp(&self.activity))
            .then(self.id.cmp(&other.id))
    }
}

impl PartialOrd for ListKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The page size asked for (`limit`), within `1..=max`, else `default`.
pub(crate) fn page_size(limit: Option<u64>, (default, max): (usize, usize)) -> Result<usize> {
    match limit {
        None => Ok(default),
        Some(n) if n >= 1 && n as usize <= max => Ok(n as usize),
        Some(_) => Err(Error::invalid(format!("limit must be 1 to {max}"))),
    }
}

/// The conversation `conversation_id` with the caller's state: `not_found` when it does not
/// exist or the caller deleted it (until a new message brings it back, as in the list),
/// `forbidden` when the caller is not a participant.
pub(crate) async fn membership(
    api: &Api,
    conversation_id: &str,
    user_id: &str,
) -> Result<MemberConversation> {
    if let Some(mc) = api
        .ctx
        .store
        .member_conversation(conversation_id, user_id)
        .await?
    {
        if !mc.state.visible(&mc.conversation) {
            return Err(Error::not_found(format!(
                "conversation {conversation_id} was deleted for you"
            )));
        }
        return Ok(mc);
    }
    if api.ctx.store.conversation(conversation_id).await?.is_some() {
        return Err(Error::forbidden(
            "you are not a participant of this conversation",
        ));
    }
    Err(Error::not_found(format!(
        "conversation {conversation_id} does not exist"
    )))
}

fn pair_key(kind: &str, a: &str, b: &str) -> String {
    let (a, b) = if a <= b { (a, b) } else { (b, a) };
    let digest = Sha256::digest(format!("{a}\u{1f}{b}").as_bytes());
    format!("{kind}:{}", hex::encode(digest))
}

/// Start the 1:1 conversation with a user (by id, phone or email) or the conversation with an
/// agent; one per pair, so asking again returns the existing one.
#[utoipa::path(
    operation_id = "createConversation",
    post, path = "/v1/conversations", tag = "conversations", security(("bearer" = [])),
    request_body = CreateConversationRequest,
    responses(
        (status = 200, description = "The existing conversation", body = ConversationView),
        (status = 201, description = "A new conversation", body = ConversationView),
        (status = 400, description = "Not exactly one of user_id, phone, email, agent_id; or yourself", body = ErrorBody),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 404, description = "No such user or agent", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    State(ref api): State<Api>,
    caller: Caller,
    Json(request): Json<CreateConversationRequest>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    require_account(api, user_id).await?;
    let store = &api.ctx.store;
    let (kind, other, agent_id) = if let Peer::Agent { agent_id } = &request.with {
        let agent = store
            .agent(agent_id)
            .await?
            .ok_or_else(|| Error::not_found(format!("agent {agent_id} does not exist")))?;
        (
            ConversationKind::Agent,
            agent.agent_id.clone(),
            Some(agent.agent_id),
        )
    } else {
        let other = match &request.with {
            Peer::User { user_id } => store.user(user_id).await?,
            Peer::Contact(contact) => {
                Contact::parse(contact.phone(), contact.email())?
                    .account(api)
                    .await?
            }
            Peer::Agent { .. } => None,
        }
        .ok_or_else(|| Error::not_found("no such user"))?;
        (ConversationKind::Direct, other.user_id, None)
    };
    if other == user_id {
        return Err(Error::client(
            messaging::ErrorCode::Conflict,
            "you cannot start a conversation with yourself",
        ));
    }
    let existing = store.conversation_between(kind, user_id, &other).await?;
    let (conversation, created) = match existing {
        Some(c) => (c, false),
        None => {
            let conversation = Conversation {
                agent_id,
                ..Conversation::new(
                    uuid::Uuid::new_v4().to_string(),
                    kind,
                    vec![user_id.to_string(), other.clone()],
                )
            };
            let key = pair_key(&wire_name(&kind), user_id, &other);
            store.insert_pair_conversation(&conversation, &key).await?
        }
    };
    if !created {
        // Asking for a conversation deleted for you shows it again (its history stays cleared).
        store
            .update_member_state(
                &conversation.conversation_id,
                user_id,
                &MemberStateUpdate {
                    restore: true,
                    ..Default::default()
                },
            )
            .await?;
    }
    let mc = membership(api, &conversation.conversation_id, user_id).await?;
    let names = names_for(api, std::slice::from_ref(&mc), user_id, false).await?;
    Reply::json(if created { 201 } else { 200 }, &view(&mc, user_id, &names))
}

/// Names for titles: the peers of 1:1 and agent conversations, and with `everyone` every
/// participant (for search).
async fn names_for(
    api: &Api,
    conversations: &[MemberConversation],
    user_id: &str,
    everyone: bool,
) -> Result<Names> {
    let mut users = Vec::new();
    let mut agents = Vec::new();
    for mc in conversations {
        let c = &mc.conversation;
        if let Some(agent) = &c.agent_id {
            agents.push(agent.clone());
        }
        match peer(c, user_id) {
            Some(p) if c.kind == ConversationKind::Direct => users.push(p.to_string()),
            _ if everyone => users.extend(
                c.participants
                    .iter()
                    .filter(|p| Some(p.as_str()) != c.agent_id.as_deref())
                    .cloned(),
            ),
            _ => {}
        }
    }
    Names::load(api, users, agents).await
}

fn matches_search(mc: &MemberConversation, user_id: &str, names: &Names, needle: &str) -> bool {
    let c = &mc.conversation;
    let hit = |text: &str| text.to_lowercase().contains(needle);
    hit(&title(c, user_id, names))
        || c.name.as_deref().is_some_and(hit)
        || c.description.as_deref().is_some_and(hit)
        || c.participants
            .iter()
            .filter(|p| p.as_str() != user_id)
            .any(|p| names.name(p).is_some_and(hit))
}

/// List the caller's conversations: pinned first, then by last activity; archived ones only when
/// asked; optionally searched by title, group name or description, and participant or agent
/// names (never message content: it is end-to-end encrypted).
#[utoipa::path(
    operation_id = "listConversations",
    get, path = "/v1/conversations", tag = "conversations", security(("bearer" = [])),
    params(ConversationListQuery),
    responses(
        (status = 200, description = "A page of conversations", body = ConversationPage),
        (status = 400, description = "Bad cursor, limit or filter", body = ErrorBody),
        (status = 401, description = "No or bad access token", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(ref api): State<Api>,
    caller: Caller,
    Query(query): Query<ConversationListQuery>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    let limit = page_size(query.limit, LIST_PAGE)?;
    let needle = given(&query.q).map(|q| q.trim().to_lowercase());
    let archived = match query.archived {
        None if needle.is_some() => None,
        None | Some(ArchivedFilter::False) => Some(false),
        Some(ArchivedFilter::True) => Some(true),
        Some(ArchivedFilter::Any) => None,
    };
    let after = given(&query.cursor).map(ListKey::decode).transpose()?;
    let all = api.ctx.store.conversations_of(user_id).await?;
    let mut chosen: Vec<MemberConversation> = all
        .into_iter()
        .filter(|mc| mc.state.visible(&mc.conversation))
        .filter(|mc| archived.is_none_or(|a| mc.state.archived == a))
        .collect();
    let names = names_for(api, &chosen, user_id, needle.is_some()).await?;
    if let Some(needle) = needle.as_deref().filter(|n| !n.is_empty()) {
        chosen.retain(|mc| matches_search(mc, user_id, &names, needle));
    }
    let total_unread = chosen
        .iter()
        .map(|mc| mc.state.unread(&mc.conversation, user_id))
        .sum();
    let mut keyed: Vec<(ListKey, MemberConversation)> = chosen
        .into_iter()
        .map(|mc| (ListKey::of(&mc), mc))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let start = match &after {
        Some(cursor) => keyed.partition_point(|(k, _)| k <= cursor),
        None => 0,
    };
    let page: Vec<&(ListKey, MemberConversation)> = keyed.iter().skip(start).take(limit).collect();
    let next_cursor = (start + page.len() < keyed.len())
        .then(|| page.last().map(|(k, _)| k.encode()))
        .flatten();
    Reply::ok(&ConversationPage {
        conversations: page
            .iter()
            .map(|(_, mc)| view(mc, user_id, &names))
            .collect(),
        next_cursor,
        total_unread,
    })
}

/// One conversation as the caller sees it.
#[utoipa::path(
    operation_id = "getConversation",
    get, path = "/v1/conversations/{conversation_id}", tag = "conversations", security(("bearer" = [])),
    params(("conversation_id" = String, Path, description = "The conversation")),
    responses(
        (status = 200, description = "The conversation", body = ConversationView),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "Not a participant", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
    )
)]
pub(crate) async fn get(
    State(ref api): State<Api>,
    caller: Caller,
    Path(conversation_id): Path<String>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    let mc = membership(api, conversation_id.as_str(), user_id).await?;
    let names = names_for(api, std::slice::from_ref(&mc), user_id, false).await?;
    Reply::ok(&view(&mc, user_id, &names))
}

/// Pin, unpin, archive or unarchive a conversation for the caller.
#[utoipa::path(
    operation_id = "updateConversation",
    patch, path = "/v1/conversations/{conversation_id}", tag = "conversations", security(("bearer" = [])),
    params(("conversation_id" = String, Path, description = "The conversation")),
    request_body = UpdateConversationRequest,
    responses(
        (status = 200, description = "The conversation as updated", body = ConversationView),
        (status = 400, description = "Nothing to change", body = ErrorBody),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "Not a participant", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
    )
)]
pub(crate) async fn update(
    State(ref api): State<Api>,
    caller: Caller,
    Path(conversation_id): Path<String>,
    Json(request): Json<UpdateConversationRequest>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    let conversation_id = conversation_id.as_str();
    if request.pinned.is_none() && request.archived.is_none() {
        return Err(Error::invalid("give `pinned` and/or `archived`"));
    }
    membership(api, conversation_id, user_id).await?;
    api.ctx
        .store
        .update_member_state(
            conversation_id,
            user_id,
            &MemberStateUpdate {
                pinned: request.pinned,
                archived: request.archived,
                ..Default::default()
            },
        )
        .await?;
    let mc = membership(api, conversation_id, user_id).await?;
    let names = names_for(api, std::slice::from_ref(&mc), user_id, false).await?;
    Reply::ok(&view(&mc, user_id, &names))
}

/// Delete a conversation for the caller: hidden from their list, its history up to now cleared
/// for them; a new message shows it again. Others keep everything.
#[utoipa::path(
    operation_id = "deleteConversation",
    delete, path = "/v1/conversations/{conversation_id}", tag = "conversations", security(("bearer" = [])),
    params(("conversation_id" = String, Path, description = "The conversation")),
    responses(
        (status = 204, description = "Deleted for the caller"),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "Not a participant", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
    )
)]
pub(crate) async fn delete(
    State(ref api): State<Api>,
    caller: Caller,
    Path(conversation_id): Path<String>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    let conversation_id = conversation_id.as_str();
    let mc = membership(api, conversation_id, user_id).await?;
    let up_to = mc
        .conversation
        .last_sequence_number
        .max(api.ctx.store.last_sequence(conversation_id).await?);
    api.ctx
        .store
        .update_member_state(
            conversation_id,
            user_id,
            &MemberStateUpdate {
                delete_up_to: Some(up_to),
                ..Default::default()
            },
        )
        .await?;
    Reply::no_content()
}

/// A page of history by sequence range (members only; content stays encrypted). Without `from`
/// and `to`: the newest page.
#[utoipa::path(
    operation_id = "listMessages",
    get, path = "/v1/conversations/{conversation_id}/messages", tag = "conversations", security(("bearer" = [])),
    params(
        ("conversation_id" = String, Path, description = "The conversation"),
        HistoryQuery,
    ),
    responses(
        (status = 200, description = "Messages, ascending", body = MessagePage),
        (status = 400, description = "Bad range or limit", body = ErrorBody),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "Not a participant", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
    )
)]
pub(crate) async fn messages(
    State(ref api): State<Api>,
    caller: Caller,
    Path(conversation_id): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    let conversation_id = conversation_id.as_str();
    let limit = page_size(query.limit, HISTORY_PAGE)?;
    let (from, to) = (query.from, query.to);
    if from.is_some_and(|f| f < 0) || to.is_some_and(|t| t < 0) {
        return Err(Error::invalid("from and to must be at least 0"));
    }
    let (from, to) = (from.map(|f| f as u64), to.map(|t| t as u64));
    let mc = membership(api, conversation_id, user_id).await?;
    let floor = mc.state.cleared_up_to + 1;
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        // An empty range: nothing in it.
        return Reply::ok(&MessagePage {
            conversation_id: conversation_id.to_string(),
            messages: Vec::new(),
            older_to: None,
            newer_from: None,
            first_available: floor,
        });
    }
    let store = &api.ctx.store;
    let page = match (from, to) {
        (Some(f), to) => {
            store
                .messages_page(
                    conversation_id,
                    f.max(floor),
                    to.unwrap_or(u64::MAX),
                    limit,
                    false,
                )
                .await?
        }
        (None, to) => {
            let mut newest = store
                .messages_page(conversation_id, floor, to.unwrap_or(u64::MAX), limit, true)
                .await?;
            newest.reverse();
            newest
        }
    };
    let known_last = mc.conversation.last_sequence_number;
    let older_to = page
        .first()
        .map(|m| m.sequence_number)
        .filter(|s| *s > floor)
        .map(|s| s - 1);
    let newer_from = page
        .last()
        .map(|m| m.sequence_number)
        .filter(|s| *s < known_last)
        .map(|s| s + 1);
    Reply::ok(&MessagePage {
        conversation_id: conversation_id.to_string(),
        messages: page.iter().map(MessageView::from).collect(),
        older_to,
        newer_from,
        first_available: floor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_order_is_pinned_then_newest_then_id() {
        let key = |pinned, activity, id: &str| ListKey {
            pinned,
            activity,
            id: id.into(),
        };
        let mut keys = [
            key(false, 5, "b"),
            key(true, 1, "x"),
            key(false, 9, "c"),
            key(false, 5, "a"),
        ];
        keys.sort();
        let ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["x", "c", "a", "b"]);
        let k = key(true, 42, "id-1");
        assert_eq!(ListKey::decode(&k.encode()).unwrap(), k);
        assert!(ListKey::decode("garbage!").is_err());
    }

    #[test]
    fn pair_keys_ignore_order() {
        assert_eq!(pair_key("direct", "a", "b"), pair_key("direct", "b", "a"));
        assert_ne!(pair_key("direct", "a", "b"), pair_key("agent", "a", "b"));
    }
}

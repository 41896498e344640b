//! Accounts: users and their profiles, password hashes, verification codes, refresh tokens.

use async_trait::async_trait;

use super::*;

/// Accounts: users and their profiles, password hashes, verification codes, refresh tokens.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Stores a new user (`conflict` when the phone or email is taken).
    async fn insert_user(&self, user: &User) -> Result<()>;
    /// One user by id.
    async fn user(&self, user_id: &str) -> Result<Option<User>>;
    /// Records a user's last-seen time and offline status.
    async fn set_last_seen(&self, user_id: &str, at: DateTime) -> Result<()>;
    /// The user with this E.164 phone number.
    async fn user_by_phone(&self, phone: &str) -> Result<Option<User>>;
    /// The user with this (normalised) email address.
    async fn user_by_email(&self, email: &str) -> Result<Option<User>>;
    /// Users by id (any order; unknown ids are skipped).
    async fn users_by_ids(&self, user_ids: &[String]) -> Result<Vec<User>>;
    /// Changes a profile's name and/or avatar (`Some(None)` removes the avatar); returns it as
    /// updated, `None` when the user does not exist.
    async fn update_profile(
        &self,
        user_id: &str,
        name: Option<&str>,
        avatar_url: Option<Option<&str>>,
    ) -> Result<Option<User>>;
    /// A user's password hash, if they set a password.
    async fn password_hash(&self, user_id: &str) -> Result<Option<String>>;
    /// Sets a user's password hash.
    async fn set_password_hash(&self, user_id: &str, password_hash: &str) -> Result<()>;
    /// Creates or replaces the pending code of a destination.
    async fn put_verification_code(&self, code: &VerificationCode) -> Result<()>;
    /// The pending code of a destination.
    async fn verification_code(&self, destination: &str) -> Result<Option<VerificationCode>>;
    /// Counts one attempt at a destination's code, atomically, unless it expired or already had
    /// `max_attempts`; returns the record as it was before this attempt (`None`: no usable code).
    async fn count_code_attempt(
        &self,
        destination: &str,
        max_attempts: u32,
        now: DateTime,
    ) -> Result<Option<VerificationCode>>;
    /// Deletes a destination's code (only if its hash is still `code_hash`, when given); true when
    /// this call deleted it, so a code is used once.
    async fn delete_verification_code(
        &self,
        destination: &str,
        code_hash: Option<&str>,
    ) -> Result<bool>;
    /// Stores a new refresh token.
    async fn insert_refresh_token(&self, token: &RefreshToken) -> Result<()>;
    /// One refresh token by hash.
    async fn refresh_token(&self, token_hash: &str) -> Result<Option<RefreshToken>>;
    /// Presents a refresh token: marks it used, atomically, if it is valid; otherwise says why not.
    async fn use_refresh_token(&self, token_hash: &str, now: DateTime) -> Result<RefreshUse>;
    /// Revokes every token of a family; returns how many were live.
    async fn revoke_refresh_family(&self, family_id: &str, now: DateTime) -> Result<u64>;
    /// Revokes every refresh token of a user.
    async fn revoke_refresh_tokens_of(&self, user_id: &str, now: DateTime) -> Result<u64>;
}

#[async_trait]
impl AccountStore for MongoStore {
    async fn insert_user(&self, user: &User) -> Result<()> {
        self.deadline(async move {
            match self.users().insert_one(user).await {
                Ok(_) => Ok(()),
                Err(e) if is_duplicate_key(&e) => Err(Error::client(
                    ErrorCode::Conflict,
                    "a user with this phone number or email already exists",
                )),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn user(&self, user_id: &str) -> Result<Option<User>> {
        self.deadline(async move { Ok(self.users().find_one(doc! {"user_id": user_id}).await?) })
            .await
    }

    async fn set_last_seen(&self, user_id: &str, at: DateTime) -> Result<()> {
        self.deadline(async move {
            self.users()
                .update_one(
                    doc! {"user_id": user_id},
                    doc! {"$set": {"last_seen": at, "status": "offline"}},
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn user_by_phone(&self, phone: &str) -> Result<Option<User>> {
        self.deadline(async move { Ok(self.users().find_one(doc! {"phone": phone}).await?) })
            .await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        self.deadline(async move { Ok(self.users().find_one(doc! {"email": email}).await?) })
            .await
    }

    async fn users_by_ids(&self, user_ids: &[String]) -> Result<Vec<User>> {
        self.deadline(async move {
            if user_ids.is_empty() {
                return Ok(Vec::new());
            }
            let cursor = self
                .users()
                .find(doc! {"user_id": {"$in": user_ids}})
                .await?;
            Ok(cursor.try_collect().await?)
        })
        .await
    }

    async fn update_profile(
        &self,
        user_id: &str,
        name: Option<&str>,
        avatar_url: Option<Option<&str>>,
    ) -> Result<Option<User>> {
        self.deadline(async move {
            let update = name_and_optional_field(name, "avatar_url", avatar_url);
            if update.is_empty() {
                return self.user(user_id).await;
            }
            Ok(self
                .users()
                .find_one_and_update(doc! {"user_id": user_id}, update)
                .return_document(ReturnDocument::After)
                .await?)
        })
        .await
    }

    async fn password_hash(&self, user_id: &str) -> Result<Option<String>> {
        self.deadline(async move {
            Ok(self
                .credentials()
                .find_one(doc! {"_id": user_id})
                .await?
                .map(|c| c.password_hash))
        })
        .await
    }

    async fn set_password_hash(&self, user_id: &str, password_hash: &str) -> Result<()> {
        self.deadline(async move {
            self.credentials()
                .replace_one(
                    doc! {"_id": user_id},
                    Credentials {
                        user_id: user_id.to_string(),
                        password_hash: password_hash.to_string(),
                        updated_at: DateTime::now(),
                    },
                )
                .upsert(true)
                .await?;
            Ok(())
        })
        .await
    }

    async fn put_verification_code(&self, code: &VerificationCode) -> Result<()> {
        self.deadline(async move {
            self.codes()
                .replace_one(doc! {"_id": &code.destination}, code)
                .upsert(true)
                .await?;
            Ok(())
        })
        .await
    }

    async fn verification_code(&self, destination: &str) -> Result<Option<VerificationCode>> {
        self.deadline(async move { Ok(self.codes().find_one(doc! {"_id": destination}).await?) })
            .await
    }

    async fn count_code_attempt(
        &self,
        destination: &str,
        max_attempts: u32,
        now: DateTime,
    ) -> Result<Option<VerificationCode>> {
        self.deadline(async move {
            Ok(self
                .codes()
                .find_one_and_update(
                    doc! {
                        "_id": destination,
                        "attempts": {"$lt": max_attempts as i64},
                        "expires_at": {"$gt": now},
                    },
                    doc! {"$inc": {"attempts": 1_i64}},
                )
                .return_document(ReturnDocument::Before)
                .await?)
        })
        .await
    }

    async fn delete_verification_code(
        &self,
        destination: &str,
        code_hash: Option<&str>,
    ) -> Result<bool> {
        self.deadline(async move {
            let mut filter = doc! {"_id": destination};
            if let Some(hash) = code_hash {
                filter.insert("code_hash", hash);
            }
            Ok(self.codes().delete_one(filter).await?.deleted_count == 1)
        })
        .await
    }

    async fn insert_refresh_token(&self, token: &RefreshToken) -> Result<()> {
        self.deadline(async move {
            self.refresh_tokens().insert_one(token).await?;
            Ok(())
        })
        .await
    }

    async fn refresh_token(&self, token_hash: &str) -> Result<Option<RefreshToken>> {
        self.deadline(async move {
            Ok(self
                .refresh_tokens()
                .find_one(doc! {"_id": token_hash})
                .await?)
        })
        .await
    }

    async fn use_refresh_token(&self, token_hash: &str, now: DateTime) -> Result<RefreshUse> {
        self.deadline(async move {
            let taken = self
                .refresh_tokens()
                .find_one_and_update(
                    doc! {
                        "_id": token_hash,
                        "used_at": null,
                        "revoked_at": null,
                        "expires_at": {"$gt": now},
                    },
                    doc! {"$set": {"used_at": now}},
                )
                .return_document(ReturnDocument::After)
                .await?;
            if let Some(token) = taken {
                return Ok(RefreshUse::Rotated(token));
            }
            Ok(match self.refresh_token(token_hash).await? {
                None => RefreshUse::Unknown,
                Some(t) if t.revoked_at.is_some() => RefreshUse::Revoked(t),
                Some(t) if t.used_at.is_some() => RefreshUse::Reused(t),
                Some(t) => RefreshUse::Expired(t),
            })
        })
        .await
    }

    async fn revoke_refresh_family(&self, family_id: &str, now: DateTime) -> Result<u64> {
        self.deadline(async move {
            let result = self
                .refresh_tokens()
                .update_many(
                    doc! {"family_id": family_id, "revoked_at": null},
                    doc! {"$set": {"revoked_at": now}},
                )
                .await?;
            Ok(result.modified_count)
        })
        .await
    }

    async fn revoke_refresh_tokens_of(&self, user_id: &str, now: DateTime) -> Result<u64> {
        self.deadline(async move {
            let result = self
                .refresh_tokens()
                .update_many(
                    doc! {"user_id": user_id, "revoked_at": null},
                    doc! {"$set": {"revoked_at": now}},
                )
                .await?;
            Ok(result.modified_count)
        })
        .await
    }
}

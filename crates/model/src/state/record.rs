//! Named records: the kinds of record the state keeps by key beside its APIs and rollouts (domains,
//! deployment configurations, alarms, notifications, analyses, deliveries, CodeDeploy applications).
//!
//! A kind is a [`Record`] (how the store keeps it) and, when users create it by name, a [`Declared`]
//! (how the admin API and config files take it). Code that goes over every kind — the store's tables,
//! change log and load, `apply -f`, the admin API's `/v1/<kind>` handlers — is written once over
//! [`Kind`] and [`DeclaredKind`], the same traits behind a pointer, and finds the kinds in the registry
//! beside the state's fields ([`super::kinds`]). Adding a kind is its type, its field in [`State`], and
//! its `impl` with its line in that registry.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::State;
use crate::{Error, Result};

/// A kind of record the state keeps by key, each stored as one JSON document.
pub trait Record: Clone + PartialEq + std::fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The kind, plural and in snake case (`deployment_configs`): the store's table. The admin API's
    /// collection is its kebab case (`/v1/deployment-configs`), a config file's key its camel case
    /// (`deploymentConfigs`).
    const KIND: &'static str;
    /// The table, when it is not [`Record::KIND`].
    const TABLE: &'static str = Self::KIND;
    /// The table's key column.
    const KEY_COLUMN: &'static str = "name";
    /// Whether the gateway routes by it (a change rebuilds the routing snapshot).
    const ROUTING: bool = false;
    /// The key it is kept under.
    fn key(&self) -> String;
    fn all(state: &State) -> &BTreeMap<String, Self>;
    fn all_mut(state: &mut State) -> &mut BTreeMap<String, Self>;
}

/// A record users create, replace and delete by name: through the admin API (`PUT /v1/<kind>/<name>`)
/// and config files (`apply -f`).
pub trait Declared: Record {
    /// What a client sends: the admin API's request body, a config file's entry.
    type Input: Serialize + DeserializeOwned + Clone + Send + 'static;
    /// One of them, in messages (`deployment config`).
    const NOUN: &'static str;
    /// The input's field that names it (`name`; a domain's `domain`).
    const NAME_FIELD: &'static str = "name";
    /// The name a config file's entry gives.
    fn input_name(input: &Self::Input) -> Option<&str>;
    /// The key `name` is kept under (domain names are case-insensitive).
    fn key_for(name: &str) -> String {
        name.to_string()
    }
    /// Creates or replaces `name` from `input`, validated; what is stored. A refusal changes nothing.
    fn put(state: &mut State, name: &str, input: Self::Input) -> Result<Self>;
    /// Deletes `name` (a conflict when something still uses it).
    fn delete(state: &mut State, name: &str) -> Result<()> {
        Self::all_mut(state)
            .remove(&Self::key_for(name))
            .map(|_| ())
            .ok_or_else(|| Error::not_found(Self::NOUN, name))
    }
    /// What `apply` says when it puts `input`.
    fn describe(input: &Self::Input) -> String {
        format!("put {} {}", Self::NOUN, Self::input_name(input).unwrap_or_default())
    }
    /// The record as the admin API shows it.
    fn view(&self, _state: &State) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }
    /// One by name as the admin API shows it (kinds with built-in records find those too).
    fn find(state: &State, name: &str) -> Option<Value> {
        Self::all(state).get(&Self::key_for(name)).map(|r| r.view(state))
    }
    /// All of them as the admin API lists them.
    fn list(state: &State) -> Vec<Value> {
        Self::all(state).values().map(|r| r.view(state)).collect()
    }
}

/// One record put or deleted: its key and, when put, its document.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordChange {
    pub key: String,
    /// `None`: deleted.
    pub doc: Option<String>,
}

/// A [`Record`] kind behind a pointer, for code over every kind (the store).
pub trait Kind: Send + Sync {
    /// [`Record::KIND`].
    fn name(&self) -> &'static str;
    fn table(&self) -> &'static str;
    fn key_column(&self) -> &'static str;
    fn routing(&self) -> bool;
    /// The records of this kind that differ between `old` and `new`, deletions first.
    fn diff(&self, old: &State, new: &State) -> serde_json::Result<Vec<RecordChange>>;
    /// Puts a stored document into `state`.
    fn load(&self, state: &mut State, doc: &str) -> serde_json::Result<()>;
    /// Removes the record kept under `key`, if there is one.
    fn remove(&self, state: &mut State, key: &str);
}

/// A [`Declared`] kind behind a pointer, for code over every kind users create (the admin API, config
/// files). Inputs come as JSON and are read here, so that a refusal names the field at fault.
pub trait DeclaredKind: Kind {
    /// [`Declared::NOUN`].
    fn noun(&self) -> &'static str;
    /// The admin API's collection (`deployment-configs`).
    fn path(&self) -> String {
        self.name().replace('_', "-")
    }
    /// A config file's key (`deploymentConfigs`).
    fn field(&self) -> String {
        let mut out = String::new();
        let mut upper = false;
        for c in self.name().chars() {
            match c {
                '_' => upper = true,
                c if upper => {
                    out.push(c.to_ascii_uppercase());
                    upper = false;
                }
                c => out.push(c),
            }
        }
        out
    }
    /// Checks a config file's entries under [`DeclaredKind::field`]: a list, each entry readable and
    /// named, no name twice.
    fn check(&self, entries: &Value) -> Result<()>;
    /// The puts that make `state` hold `entries` (checked): those that would change something, or with
    /// `create_only` those not there at all.
    fn plan(&self, state: &State, entries: &Value, create_only: bool) -> Vec<NamedPut>;
    /// Creates or replaces `name` from `input` (read here); the stored record as the admin API shows
    /// it, and whether it was created.
    fn put(&self, state: &mut State, name: &str, input: &Value) -> Result<(Value, bool)>;
    fn delete(&self, state: &mut State, name: &str) -> Result<()>;
    fn find(&self, state: &State, name: &str) -> Option<Value>;
    fn list(&self, state: &State) -> Vec<Value>;
}

/// One put of a declared record, as a plan of `apply -f` holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedPut {
    /// [`Record::KIND`].
    pub kind: &'static str,
    pub name: String,
    pub input: Value,
    /// What it does, in words ([`Declared::describe`]).
    pub text: String,
}

/// Reads `T` from JSON, naming the field at fault under `prefix` (`alarms[0].threshold`).
pub fn read<T: DeserializeOwned>(prefix: &str, v: &Value) -> Result<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = match (prefix.is_empty(), path.as_str()) {
            (_, "." | "") => prefix.to_string(),
            (true, p) => p.to_string(),
            (false, p) if p.starts_with('[') => format!("{prefix}{p}"),
            (false, p) => format!("{prefix}.{p}"),
        };
        Error::Unreadable {
            field,
            reason: e.into_inner().to_string(),
        }
    })
}

/// The kind `T`, behind a pointer: `&Of::<Alarm>::KIND` is a `&dyn Kind`.
pub struct Of<T>(PhantomData<fn() -> T>);

impl<T> Of<T> {
    pub const KIND: Self = Of(PhantomData);
}

impl<T: Record> Kind for Of<T> {
    fn name(&self) -> &'static str {
        T::KIND
    }

    fn table(&self) -> &'static str {
        T::TABLE
    }

    fn key_column(&self) -> &'static str {
        T::KEY_COLUMN
    }

    fn routing(&self) -> bool {
        T::ROUTING
    }

    fn diff(&self, old: &State, new: &State) -> serde_json::Result<Vec<RecordChange>> {
        let (old, new) = (T::all(old), T::all(new));
        let mut out: Vec<RecordChange> = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .map(|k| RecordChange { key: k.clone(), doc: None })
            .collect();
        for (key, r) in new {
            if old.get(key) != Some(r) {
                out.push(RecordChange {
                    key: key.clone(),
                    doc: Some(serde_json::to_string(r)?),
                });
            }
        }
        Ok(out)
    }

    fn load(&self, state: &mut State, doc: &str) -> serde_json::Result<()> {
        let r: T = serde_json::from_str(doc)?;
        T::all_mut(state).insert(r.key(), r);
        Ok(())
    }

    fn remove(&self, state: &mut State, key: &str) {
        T::all_mut(state).remove(key);
    }
}

impl<T: Declared> DeclaredKind for Of<T> {
    fn noun(&self) -> &'static str {
        T::NOUN
    }

    fn check(&self, entries: &Value) -> Result<()> {
        let field = self.field();
        let Some(list) = entries.as_array() else {
            return Err(Error::Unreadable {
                field,
                reason: "must be a list".into(),
            });
        };
        let mut seen = std::collections::BTreeSet::new();
        for (i, v) in list.iter().enumerate() {
            let input: T::Input = read(&format!("{field}[{i}]"), v)?;
            let at = format!("{field}[{i}].{}", T::NAME_FIELD);
            let name = T::input_name(&input).unwrap_or_default();
            if name.is_empty() {
                return Err(Error::invalid(at, "", format!("every {} needs a {}", T::NOUN, T::NAME_FIELD)));
            }
            if !seen.insert(T::key_for(name)) {
                return Err(Error::invalid(at, name, format!("declares {} {name:?} a second time", T::NOUN)));
            }
        }
        Ok(())
    }

    fn plan(&self, state: &State, entries: &Value, create_only: bool) -> Vec<NamedPut> {
        let mut scratch = state.clone();
        let mut out = Vec::new();
        for v in entries.as_array().into_iter().flatten() {
            // Checked before: an entry that cannot be read is left for the put to refuse.
            let Ok(input) = read::<T::Input>("", v) else {
                out.push(NamedPut {
                    kind: T::KIND,
                    name: String::new(),
                    input: v.clone(),
                    text: format!("put {}", T::NOUN),
                });
                continue;
            };
            let name = T::input_name(&input).unwrap_or_default().to_string();
            let current = T::all(state).get(&T::key_for(&name));
            let keep = match current {
                Some(_) if create_only => true,
                // Unchanged: putting it again would store what is there.
                Some(cur) => T::put(&mut scratch, &name, input.clone()).is_ok_and(|r| r == *cur),
                None => false,
            };
            if !keep {
                out.push(NamedPut {
                    kind: T::KIND,
                    text: T::describe(&input),
                    name,
                    input: v.clone(),
                });
            }
        }
        out
    }

    fn put(&self, state: &mut State, name: &str, input: &Value) -> Result<(Value, bool)> {
        let input: T::Input = read("", input)?;
        let created = !T::all(state).contains_key(&T::key_for(name));
        let r = T::put(state, name, input)?;
        Ok((r.view(state), created))
    }

    fn delete(&self, state: &mut State, name: &str) -> Result<()> {
        T::delete(state, name)
    }

    fn find(&self, state: &State, name: &str) -> Option<Value> {
        T::find(state, name)
    }

    fn list(&self, state: &State) -> Vec<Value> {
        T::list(state)
    }
}

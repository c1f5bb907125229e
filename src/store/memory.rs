//! An in-memory store for tests: a map behind a mutex.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Entry, GreylistStore, StoreError, UpdateFn, Write};

/// An in-memory store: a map behind a mutex.
#[derive(Default)]
pub struct MemStore(Mutex<BTreeMap<String, Entry>>);

#[async_trait]
impl GreylistStore for MemStore {
    fn backend(&self) -> &'static str {
        "memory"
    }
    async fn update(&self, key: &str, f: &UpdateFn<'_>) -> Result<Option<Entry>, StoreError> {
        let mut m = self.0.lock().unwrap();
        let old = m.get(key).copied();
        match f(old) {
            Write::Put(e) => {
                m.insert(key.into(), e);
            }
            Write::Delete => {
                m.remove(key);
            }
            Write::Keep => {}
        }
        Ok(old)
    }
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.0.lock().unwrap().get(key).copied())
    }
    async fn put(&self, key: &str, entry: Entry) -> Result<(), StoreError> {
        self.0.lock().unwrap().insert(key.into(), entry);
        Ok(())
    }
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.0.lock().unwrap().remove(key).is_some())
    }
    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Entry)>, StoreError> {
        let m = self.0.lock().unwrap();
        Ok(m.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), *v))
            .collect())
    }
    async fn purge(&self, now: u64) -> Result<u64, StoreError> {
        let mut m = self.0.lock().unwrap();
        let before = m.len();
        m.retain(|_, e| !e.is_expired(now));
        Ok((before - m.len()) as u64)
    }
    async fn len(&self) -> Result<u64, StoreError> {
        Ok(self.0.lock().unwrap().len() as u64)
    }
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

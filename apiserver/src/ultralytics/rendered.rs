//! Items rendered once per object version. A list item is a pure function of its object, so its
//! JSON is right until the object changes, and a change gives it a new `resourceVersion`: keyed
//! by uid and resourceVersion, an entry never needs invalidating. A list then sorts and joins
//! cached fragments instead of building and serialising every item on every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::Resource;
use serde::Serialize;
use serde_json::value::RawValue;

/// An object's uid and resourceVersion.
type Key = (String, String);

/// Rendered items of one kind, by object uid: (resourceVersion, JSON).
pub struct Rendered<K> {
    items: Mutex<HashMap<String, (String, Arc<RawValue>)>>,
    _kind: std::marker::PhantomData<fn(&K)>,
}

impl<K> std::fmt::Debug for Rendered<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.items.lock().map(|i| i.len()).unwrap_or_default();
        f.debug_struct("Rendered").field("items", &n).finish()
    }
}

impl<K> Default for Rendered<K> {
    fn default() -> Self {
        Rendered { items: Mutex::default(), _kind: std::marker::PhantomData }
    }
}

impl<K: Resource> Rendered<K> {
    /// `objects` rendered by `render` (the same function for every call on this cache), each
    /// from the cache when its version was rendered before. `live` is how many objects of this
    /// kind exist: entries of deleted objects are dropped once the cache holds twice as many.
    pub fn render<T: Serialize>(
        &self,
        objects: &[Arc<K>],
        live: usize,
        render: impl Fn(&K) -> T,
    ) -> Result<Vec<Arc<RawValue>>, serde_json::Error> {
        let fresh = |o: &K| -> Result<Arc<RawValue>, serde_json::Error> {
            Ok(Arc::from(serde_json::value::to_raw_value(&render(o))?))
        };
        let key = |o: &K| {
            let m = o.meta();
            // Objects without both (only test doubles lack them) are rendered every time.
            m.uid.clone().zip(m.resource_version.clone())
        };
        // Look up under the lock (a hit, or a miss with the key to store it under); render the
        // misses with it released (a list after many changes must not hold up the other
        // requests); insert them under it again.
        let found: Vec<Result<Arc<RawValue>, Option<Key>>> = {
            let items = self.items.lock().unwrap_or_else(|e| e.into_inner());
            objects
                .iter()
                .map(|o| {
                    let (uid, rv) = key(o).ok_or(None)?;
                    match items.get(&uid) {
                        Some((v, json)) if *v == rv => Ok(json.clone()),
                        _ => Err(Some((uid, rv))),
                    }
                })
                .collect()
        };
        let mut out = Vec::with_capacity(objects.len());
        let mut rendered = Vec::new();
        for (o, hit) in objects.iter().zip(found) {
            match hit {
                Ok(json) => out.push(json),
                Err(k) => {
                    let json = fresh(o)?;
                    if let Some(k) = k {
                        rendered.push((k, json.clone()));
                    }
                    out.push(json);
                }
            }
        }
        if !rendered.is_empty() {
            let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
            if items.len() + rendered.len() > 2 * live.max(objects.len()) + 64 {
                items.clear();
            }
            for ((uid, rv), json) in rendered {
                items.insert(uid, (rv, json));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn cm(uid: &str, rv: &str, value: &str) -> Arc<ConfigMap> {
        Arc::new(ConfigMap {
            metadata: ObjectMeta { uid: Some(uid.into()), resource_version: Some(rv.into()), ..Default::default() },
            data: Some([("v".to_string(), value.to_string())].into()),
            ..Default::default()
        })
    }

    fn value(c: &ConfigMap) -> String {
        c.data.as_ref().and_then(|d| d.get("v")).cloned().unwrap_or_default()
    }

    #[test]
    fn an_item_is_rendered_once_per_version() {
        let cache = Rendered::<ConfigMap>::default();
        let calls = std::cell::Cell::new(0);
        let render = |c: &ConfigMap| {
            calls.set(calls.get() + 1);
            value(c)
        };
        let a = cache.render(&[cm("a", "1", "one"), cm("b", "1", "two")], 2, render).expect("render");
        assert_eq!(a.iter().map(|r| r.get()).collect::<Vec<_>>(), ["\"one\"", "\"two\""]);
        assert_eq!(calls.get(), 2);
        // Same versions: from the cache.
        cache.render(&[cm("a", "1", "one"), cm("b", "1", "two")], 2, render).expect("render");
        assert_eq!(calls.get(), 2);
        // A new version of one object: only it is rendered again, and its new content shows.
        let b = cache.render(&[cm("a", "2", "uno"), cm("b", "1", "two")], 2, render).expect("render");
        assert_eq!(b[0].get(), "\"uno\"");
        assert_eq!(calls.get(), 3);
        // No uid or version (only test doubles lack them): rendered every time.
        let bare =
            Arc::new(ConfigMap { data: Some([("v".to_string(), "x".to_string())].into()), ..Default::default() });
        cache.render(std::slice::from_ref(&bare), 2, render).expect("render");
        cache.render(&[bare], 2, render).expect("render");
        assert_eq!(calls.get(), 5);
    }

    #[test]
    fn entries_of_deleted_objects_do_not_pile_up() {
        let cache = Rendered::<ConfigMap>::default();
        for i in 0..1000 {
            cache.render(&[cm(&format!("u{i}"), "1", "x")], 1, value).expect("render");
        }
        let held = cache.items.lock().expect("lock").len();
        assert!(held <= 2 + 64 + 1, "{held} entries for one live object");
    }
}

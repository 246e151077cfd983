//! Kubernetes resources as the auditor names them, in one place: the etcd
//! key → resource mapping (kube-apiserver's key layout, `storage.md`), the
//! built-in Kind ↔ resource table, the plural kube-apiserver guesses for other
//! kinds, and the `--resources` filter built on them.
//!
//! Names: a resource is named as its keys are stored. kube-apiserver keeps
//! the resources of its built-in API groups without the group
//! (`/registry/deployments/`, `/registry/clusterroles/`; [`UNGROUPED_GROUPS`]),
//! so they are named by the bare resource (`deployments`), while groups
//! served by other storage keep it in the key and in the name
//! (`apiservices.apiregistration.k8s.io`, CRDs, custom resources
//! `widgets.example.com`). A `resource.group` the user or an
//! EncryptionConfiguration writes is reduced to that name by
//! [`stored_resource`] before it is compared with any key's resource.

use std::borrow::Cow;

/// Which resources are in scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceFilter {
    /// Every key under the prefix.
    All,
    /// Only these resources (`secrets`, `configmaps`, `widgets.example.com`).
    Only(Vec<String>),
}

impl ResourceFilter {
    /// Parses `all` or a comma-separated list. `group/resource` is accepted for
    /// `resource.group`.
    pub fn parse(list: &str) -> Self {
        let names: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(|name| match name.split_once('/') {
                Some((group, resource)) => format!("{resource}.{group}"),
                None => name.to_string(),
            })
            .map(|name| stored_resource(&name).to_string())
            .collect();
        if names.iter().any(|name| name == "all") {
            ResourceFilter::All
        } else {
            ResourceFilter::Only(names)
        }
    }

    /// True if `resource` (`secrets`, `widgets.example.com`) is in scope.
    pub fn includes(&self, resource: &str) -> bool {
        match self {
            ResourceFilter::All => true,
            ResourceFilter::Only(names) => {
                names.iter().any(|name| stored_resource(name) == resource)
            }
        }
    }

    /// True if objects of `kind` belong to a resource in scope (kind `Secret`
    /// is resource `secrets`, `Deployment` is `deployments.apps`; a kind
    /// outside the table matches by its plural whatever the group).
    pub fn includes_kind(&self, kind: &[u8]) -> bool {
        match self {
            ResourceFilter::All => true,
            ResourceFilter::Only(names) => {
                let resource = resource_for_any_kind(kind);
                let plural = resource.split('.').next().unwrap_or_default();
                self.includes(stored_resource(&resource))
                    || names
                        .iter()
                        .any(|name| name.split('.').next() == Some(plural))
            }
        }
    }
}

/// The API groups kube-apiserver stores without the group in the key: its
/// built-in groups (`pkg/registry/*/rest`, whose storage prefix is the bare
/// resource, `pkg/kubeapiserver/default_storage_factory_builder.go`), incl.
/// the legacy `extensions` and the groups whose resources are never stored
/// (authentication, authorization). Not here, as their servers keep the group:
/// `apiregistration.k8s.io` (the aggregator), `apiextensions.k8s.io` (CRDs)
/// and every custom resource's group.
pub const UNGROUPED_GROUPS: &[&str] = &[
    "apps",
    "batch",
    "autoscaling",
    "policy",
    "extensions",
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
    "storage.k8s.io",
    "scheduling.k8s.io",
    "coordination.k8s.io",
    "node.k8s.io",
    "discovery.k8s.io",
    "certificates.k8s.io",
    "admissionregistration.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "events.k8s.io",
    "resource.k8s.io",
    "storagemigration.k8s.io",
    "internal.apiserver.k8s.io",
    "authentication.k8s.io",
    "authorization.k8s.io",
];

/// The name [`resource_of`] gives the keys of `name` (`resource` or
/// `resource.group`): the bare resource for a group kube-apiserver stores
/// ungrouped (`deployments.apps` → `deployments`, `events.events.k8s.io` →
/// `events`, which cohabit with the core ones) or the core group written
/// `secrets.`; otherwise `name` itself (`widgets.example.com`).
pub fn stored_resource(name: &str) -> &str {
    match name.split_once('.') {
        Some((resource, group)) if group.is_empty() || UNGROUPED_GROUPS.contains(&group) => {
            resource
        }
        _ => name,
    }
}

/// The resource a key belongs to, by kube-apiserver's key layout (see
/// `storage.md`): `<prefix>/<resource>/...` (core and built-in groups, named
/// by the bare resource: see the module doc), `<prefix>/<group>/<resource>/...`
/// for other groups (a first segment with a dot), reported as
/// `resource.group`, and the historical odd paths (`services/specs`,
/// `services/endpoints`, `minions`, `controllers`, `ingress`,
/// `podsecuritypolicy`: `SpecialDefaultResourcePrefixes`). `None` for keys
/// outside the prefix.
pub fn resource_of(key: &[u8], prefix: &[u8]) -> Option<String> {
    resource_name(key, prefix).map(Cow::into_owned)
}

/// [`resource_of`], borrowing from the key in the usual case (a UTF-8 first
/// segment that is the resource itself): no allocation per new key.
pub(crate) fn resource_name<'k>(key: &'k [u8], prefix: &[u8]) -> Option<Cow<'k, str>> {
    let rest = key.strip_prefix(prefix)?.strip_prefix(b"/")?;
    let mut segments = rest.split(|&b| b == b'/');
    let first = String::from_utf8_lossy(segments.next()?);
    if first.is_empty() {
        return None;
    }
    let second = segments.next().map(String::from_utf8_lossy);
    Some(match (first.as_ref(), second.as_deref()) {
        ("services", Some("specs")) => Cow::Borrowed("services"),
        ("services", Some("endpoints")) => Cow::Borrowed("endpoints"),
        ("minions", _) => Cow::Borrowed("nodes"),
        ("controllers", _) => Cow::Borrowed("replicationcontrollers"),
        ("ingress", _) => Cow::Borrowed("ingresses"),
        ("podsecuritypolicy", _) => Cow::Borrowed("podsecuritypolicies"),
        (group, Some(resource)) if group.contains('.') && !resource.is_empty() => {
            Cow::Owned(format!("{resource}.{group}"))
        }
        _ => first,
    })
}

/// The narrowest key range holding every resource of `resources` under
/// `prefix` (the reverse of [`resource_of`]): with one resource, its own
/// directory (`/registry/secrets/`, `/registry/services/specs/`,
/// `/registry/apps/deployments/`); otherwise the whole prefix.
pub fn key_range(prefix: &str, resources: &ResourceFilter) -> Vec<u8> {
    let prefix = prefix.trim_end_matches('/');
    let directory = match resources {
        ResourceFilter::Only(names) if names.len() == 1 => {
            let name = stored_resource(names.first().map(String::as_str).unwrap_or_default());
            match name {
                "services" => "services/specs".to_string(),
                "endpoints" => "services/endpoints".to_string(),
                "nodes" => "minions".to_string(),
                "replicationcontrollers" => "controllers".to_string(),
                "ingresses" => "ingress".to_string(),
                "podsecuritypolicies" => "podsecuritypolicy".to_string(),
                _ => match name.split_once('.') {
                    Some((resource, group)) => format!("{group}/{resource}"),
                    None => name.to_string(),
                },
            }
        }
        _ => String::new(),
    };
    if directory.is_empty() {
        format!("{prefix}/").into_bytes()
    } else {
        format!("{prefix}/{directory}/").into_bytes()
    }
}

/// Kinds of the built-in resources (as [`resource_of`] names them) that are usually encrypted or commonly stored.
const KINDS: &[(&str, &str)] = &[
    ("secrets", "Secret"),
    ("configmaps", "ConfigMap"),
    ("serviceaccounts", "ServiceAccount"),
    ("pods", "Pod"),
    ("services", "Service"),
    ("endpoints", "Endpoints"),
    ("nodes", "Node"),
    ("namespaces", "Namespace"),
    ("events", "Event"),
    ("limitranges", "LimitRange"),
    ("resourcequotas", "ResourceQuota"),
    ("persistentvolumes", "PersistentVolume"),
    ("persistentvolumeclaims", "PersistentVolumeClaim"),
    ("replicationcontrollers", "ReplicationController"),
    ("podtemplates", "PodTemplate"),
    ("deployments.apps", "Deployment"),
    ("replicasets.apps", "ReplicaSet"),
    ("statefulsets.apps", "StatefulSet"),
    ("daemonsets.apps", "DaemonSet"),
    ("jobs.batch", "Job"),
    ("cronjobs.batch", "CronJob"),
    (
        "customresourcedefinitions.apiextensions.k8s.io",
        "CustomResourceDefinition",
    ),
];

/// The resource of a built-in `kind` (`Secret` → `secrets`, `Deployment` →
/// `deployments.apps`): the one table of kinds, shared by the deep scan and verification.
pub fn resource_for_kind(kind: &str) -> Option<&'static str> {
    KINDS
        .iter()
        .find(|(_, known)| *known == kind)
        .map(|(resource, _)| *resource)
}

/// The kind of a built-in `resource` (`secrets` → `Secret`), when the table
/// knows it.
pub fn kind_of_resource(resource: &[u8]) -> Option<&'static str> {
    KINDS
        .iter()
        .find(|(name, _)| stored_resource(name).as_bytes() == resource)
        .map(|(_, kind)| *kind)
}

/// The resource of any `kind`: the table's, else kube-apiserver's guess
/// ([`plural_of`]).
pub fn resource_for_any_kind(kind: &[u8]) -> String {
    let kind = String::from_utf8_lossy(kind);
    resource_for_kind(&kind).map_or_else(|| plural_of(kind.as_bytes()), str::to_string)
}

/// The lowercase plural of a kind not in the built-in table, as
/// kube-apiserver guesses resources (`NetworkPolicy` -> `networkpolicies`);
/// kinds already plural stay so (`Endpoints` -> `endpoints`, as Kubernetes'
/// unpluralized suffixes).
fn plural_of(kind: &[u8]) -> String {
    let lower = String::from_utf8_lossy(kind).to_ascii_lowercase();
    if lower.ends_with("endpoints") {
        return lower;
    }
    if let Some(stem) = lower.strip_suffix('y') {
        if !stem.ends_with(['a', 'e', 'i', 'o', 'u']) {
            return format!("{stem}ies");
        }
    }
    if lower.ends_with('s') || lower.ends_with("ch") || lower.ends_with('x') {
        return format!("{lower}es");
    }
    format!("{lower}s")
}

/// `namespace/name` or `name` from an etcd key: the last two segments after
/// the resource's directory (see `storage.md` for the layouts).
pub fn object_name(key: &[u8], prefix: &[u8]) -> Option<String> {
    let rest = key.strip_prefix(prefix)?.strip_prefix(b"/")?;
    let text = std::str::from_utf8(rest).ok()?;
    let segments: Vec<&str> = text.split('/').collect();
    let directory = match segments.as_slice() {
        ["services", "specs" | "endpoints", ..] => 2,
        [group, _, ..] if group.contains('.') => 2,
        _ => 1,
    };
    match segments.get(directory..)? {
        [name] => Some((*name).to_string()),
        [namespace, name] => Some(format!("{namespace}/{name}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_from_keys() {
        let p = b"/registry";
        let r = |key: &str| resource_of(key.as_bytes(), p);
        assert_eq!(r("/registry/secrets/ns/a").as_deref(), Some("secrets"));
        assert_eq!(
            r("/registry/services/specs/ns/a").as_deref(),
            Some("services")
        );
        assert_eq!(
            r("/registry/services/endpoints/ns/a").as_deref(),
            Some("endpoints")
        );
        assert_eq!(r("/registry/minions/n1").as_deref(), Some("nodes"));
        assert_eq!(
            r("/registry/controllers/ns/rc").as_deref(),
            Some("replicationcontrollers")
        );
        assert_eq!(
            r("/registry/apiextensions.k8s.io/customresourcedefinitions/x").as_deref(),
            Some("customresourcedefinitions.apiextensions.k8s.io")
        );
        assert_eq!(r("/registryx/secrets/a"), None);
        assert_eq!(r("compact_rev_key"), None);
        assert_eq!(
            ResourceFilter::parse("secrets, example.com/widgets"),
            ResourceFilter::Only(vec!["secrets".into(), "widgets.example.com".into()])
        );
        assert_eq!(ResourceFilter::parse("all"), ResourceFilter::All);
    }

    #[test]
    fn key_range_of_one_resource_holds_exactly_its_keys() {
        // key_range is resource_of read backwards: a key in the range belongs
        // to the resource, whatever odd directory kube-apiserver gives it.
        // (Built-in groups are stored without their group, `/registry/
        // deployments/`, and named so: see built_in_groups_name_their_ungrouped_keys.)
        for resource in [
            "secrets",
            "services",
            "endpoints",
            "nodes",
            "replicationcontrollers",
            "ingresses",
            "podsecuritypolicies",
            "deployments",
            "widgets.example.com",
        ] {
            let filter = ResourceFilter::Only(vec![resource.to_string()]);
            let mut key = key_range("/registry/", &filter);
            key.extend_from_slice(b"ns/name");
            assert_eq!(
                resource_of(&key, b"/registry").as_deref(),
                Some(resource),
                "{}",
                String::from_utf8_lossy(&key)
            );
        }
        assert_eq!(key_range("/registry", &ResourceFilter::All), b"/registry/");
        let two = ResourceFilter::parse("secrets,configmaps");
        assert_eq!(key_range("/registry", &two), b"/registry/");
    }

    #[test]
    fn built_in_groups_name_their_ungrouped_keys() {
        // kube-apiserver stores its built-in groups without the group (a real
        // v1.32 db: `/registry/clusterroles/`, `/registry/deployments/`), so
        // `resource.group` must match those keys and select their range.
        let p = b"/registry";
        for (name, key) in [
            ("deployments.apps", "/registry/deployments/ns/d"),
            ("apps/deployments", "/registry/deployments/ns/d"),
            (
                "clusterroles.rbac.authorization.k8s.io",
                "/registry/clusterroles/admin",
            ),
            ("ingresses.networking.k8s.io", "/registry/ingress/ns/i"),
            ("ingresses.extensions", "/registry/ingress/ns/i"),
            ("events.events.k8s.io", "/registry/events/ns/e"),
            ("leases.coordination.k8s.io", "/registry/leases/ns/l"),
            (
                "podsecuritypolicies.policy",
                "/registry/podsecuritypolicy/p",
            ),
            ("secrets.", "/registry/secrets/ns/s"),
            (
                "apiservices.apiregistration.k8s.io",
                "/registry/apiregistration.k8s.io/apiservices/v1.apps",
            ),
            (
                "customresourcedefinitions.apiextensions.k8s.io",
                "/registry/apiextensions.k8s.io/customresourcedefinitions/w",
            ),
            ("widgets.example.com", "/registry/example.com/widgets/ns/w"),
            // A custom resource that shares a built-in's plural keeps its group.
            (
                "deployments.example.com",
                "/registry/example.com/deployments/ns/d",
            ),
        ] {
            let filter = ResourceFilter::parse(name);
            let resource = resource_of(key.as_bytes(), p).expect("in the prefix");
            assert!(filter.includes(&resource), "{name} must match {key}");
            assert!(
                name.contains('/')
                    || ResourceFilter::Only(vec![name.to_string()]).includes(&resource),
                "{name} (unparsed) must match {key}"
            );
            let range = key_range("/registry", &filter);
            assert!(key.as_bytes().starts_with(&range), "{name}: {key}");
        }
        assert!(!ResourceFilter::parse("deployments.example.com").includes("deployments"));
        assert!(!ResourceFilter::parse("deployments.apps").includes("deployments.example.com"));
        assert_eq!(
            stored_resource("widgets.example.com"),
            "widgets.example.com"
        );
        assert!(ResourceFilter::parse("deployments.apps").includes_kind(b"Deployment"));
        // The verifier's kind table names resources as keys do.
        assert_eq!(kind_of_resource(b"deployments"), Some("Deployment"));
        assert_eq!(kind_of_resource(b"jobs"), Some("Job"));
    }

    #[test]
    fn plurals_follow_kube_naming() {
        assert_eq!(plural_of(b"Endpoints"), "endpoints");
        assert_eq!(plural_of(b"Secret"), "secrets");
        assert_eq!(plural_of(b"NetworkPolicy"), "networkpolicies");
        assert_eq!(plural_of(b"Ingress"), "ingresses");
        assert_eq!(plural_of(b"Gateway"), "gateways");
    }

    #[test]
    fn object_names_from_keys() {
        let p = b"/registry";
        assert_eq!(
            object_name(b"/registry/secrets/ns/a", p).as_deref(),
            Some("ns/a")
        );
        assert_eq!(
            object_name(b"/registry/namespaces/ns", p).as_deref(),
            Some("ns")
        );
        assert_eq!(
            object_name(b"/registry/example.com/widgets/ns/w", p).as_deref(),
            Some("ns/w")
        );
        assert_eq!(
            object_name(b"/registry/services/specs/ns/s", p).as_deref(),
            Some("ns/s")
        );
        assert_eq!(object_name(b"/other/secrets/ns/a", p), None);
    }
}

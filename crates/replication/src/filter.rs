//! Include/exclude filters on item names. An item's name is what a user
//! thinks of: the package for npm and PyPI, the path for assets, the crate for
//! cargo (lowercase, `_` for `-`), the package id for nuget (lowercase).

use ferry_types::{FeedType, ItemKey};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::ReplError;

/// The name filters match against.
pub fn item_name(ty: FeedType, key: &ItemKey) -> &str {
    let k = key.as_str();
    match ty {
        FeedType::Assets => k,
        // pkg/NAME/VERSION or tag/NAME/TAG, where NAME may be @scope/name.
        FeedType::Npm => {
            let rest = k.split_once('/').map_or(k, |(_, r)| r);
            rest.rsplit_once('/').map_or(rest, |(name, _)| name)
        }
        // NORMALIZED/FILENAME
        FeedType::Pypi => k.split_once('/').map_or(k, |(n, _)| n),
        // crate/CANONICAL/VERSION: the crate name, lowercase with `_` for `-`.
        FeedType::Cargo => {
            let rest = k.split_once('/').map_or(k, |(_, r)| r);
            rest.split_once('/').map_or(rest, |(name, _)| name)
        }
        // pkg/ID/VERSION: the package id, lowercase.
        FeedType::Nuget => {
            let rest = k.split_once('/').map_or(k, |(_, r)| r);
            rest.split_once('/').map_or(rest, |(id, _)| id)
        }
        // deb/DIST/COMPONENT/NAME/VERSION/ARCH: the package name.
        FeedType::Debian => k.split('/').nth(3).unwrap_or(k),
        // rpm/NAME/EPOCH:VERSION-RELEASE/ARCH: the package name.
        FeedType::Rpm => k.split('/').nth(1).unwrap_or(k),
        // manifest/REPOSITORY/DIGEST or tag/REPOSITORY/TAG, where REPOSITORY may nest.
        FeedType::Oci => {
            let rest = k.split_once('/').map_or(k, |(_, r)| r);
            rest.rsplit_once('/').map_or(rest, |(repo, _)| repo)
        }
    }
}

/// Include globs (empty: everything) minus exclude globs.
#[derive(Debug, Clone)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    /// A second filter an item must also pass ([`Filter::and`]).
    also: Option<Box<Filter>>,
}

fn build(globs: &[String]) -> Result<Option<GlobSet>, ReplError> {
    if globs.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for g in globs {
        if g.trim().is_empty() {
            return Err(ReplError::Invalid(
                "an empty filter pattern matches no name: leave it out, or give one such as \"docs/**\""
                    .into(),
            ));
        }
        b.add(Glob::new(g).map_err(|e| ReplError::Invalid(format!("filter {g:?}: {e}")))?);
    }
    b.build().map(Some).map_err(|e| ReplError::Invalid(e.to_string()))
}

impl Filter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, ReplError> {
        Ok(Self {
            include: build(include)?,
            exclude: build(exclude)?,
            also: None,
        })
    }

    pub fn everything() -> Self {
        Self {
            include: None,
            exclude: None,
            also: None,
        }
    }

    /// The items both `self` and `other` admit: what a peer's own filter
    /// may narrow, never widen, of the replication's.
    pub fn and(mut self, other: Filter) -> Self {
        if other.is_everything() {
            return self;
        }
        self.also = Some(Box::new(match self.also.take() {
            Some(inner) => inner.and(other),
            None => other,
        }));
        self
    }

    /// Whether every item passes (no include and no exclude globs). Only
    /// then does a backlog counted by feed (bytes ahead) say what this
    /// replication will move.
    pub fn is_everything(&self) -> bool {
        self.include.is_none()
            && self.exclude.is_none()
            && self.also.as_ref().is_none_or(|f| f.is_everything())
    }

    pub fn admits(&self, ty: FeedType, key: &ItemKey) -> bool {
        let name = item_name(ty, key);
        self.include.as_ref().is_none_or(|g| g.is_match(name))
            && !self.exclude.as_ref().is_some_and(|g| g.is_match(name))
            && self.also.as_ref().is_none_or(|f| f.admits(ty, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> ItemKey {
        ItemKey::new(s).unwrap()
    }

    #[test]
    fn names_per_feed_type() {
        assert_eq!(item_name(FeedType::Npm, &k("pkg/@acme/ui/1.0.0")), "@acme/ui");
        assert_eq!(item_name(FeedType::Npm, &k("tag/left-pad/latest")), "left-pad");
        assert_eq!(
            item_name(FeedType::Pypi, &k("my-pkg/my_pkg-1.0-py3-none-any.whl")),
            "my-pkg"
        );
        assert_eq!(item_name(FeedType::Assets, &k("a/b.txt")), "a/b.txt");
        assert_eq!(item_name(FeedType::Oci, &k("tag/team/app/latest")), "team/app");
        assert_eq!(item_name(FeedType::Cargo, &k("crate/my_crate/1.0.0")), "my_crate");
        assert_eq!(
            item_name(FeedType::Nuget, &k("pkg/newtonsoft.json/13.0.1")),
            "newtonsoft.json"
        );
    }

    #[test]
    fn and_admits_what_both_admit() {
        let mine = Filter::new(&["@acme/*".into()], &["@acme/secret".into()]).unwrap();
        let asked = Filter::new(&["@acme/secret".into(), "@acme/ui".into(), "other".into()], &[]).unwrap();
        let both = mine.and(asked);
        assert!(!both.is_everything());
        assert!(both.admits(FeedType::Npm, &k("pkg/@acme/ui/1.0.0")));
        assert!(!both.admits(FeedType::Npm, &k("pkg/@acme/secret/1.0.0")));
        assert!(!both.admits(FeedType::Npm, &k("pkg/other/1.0.0")));
        assert!(!both.admits(FeedType::Npm, &k("pkg/@acme/db/1.0.0")));
        assert!(Filter::everything().and(Filter::everything()).is_everything());
    }

    #[test]
    fn include_then_exclude() {
        let f = Filter::new(&["@acme/*".into(), "left-*".into()], &["@acme/secret".into()]).unwrap();
        assert!(f.admits(FeedType::Npm, &k("pkg/@acme/ui/1.0.0")));
        assert!(!f.admits(FeedType::Npm, &k("pkg/@acme/secret/1.0.0")));
        assert!(f.admits(FeedType::Npm, &k("pkg/left-pad/1.0.0")));
        assert!(!f.admits(FeedType::Npm, &k("pkg/lodash/1.0.0")));
        assert!(Filter::everything().admits(FeedType::Assets, &k("x")));
        assert!(Filter::new(&["[".into()], &[]).is_err());
    }
}

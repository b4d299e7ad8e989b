//! Target frameworks as NuGet names and compares them, for v2's
//! `Search(targetFramework=…)` and `GetUpdates(targetFrameworks=…)`
//! (Microsoft Learn, "Target frameworks" and ".NET Standard"; NuGet's
//! compatibility rules, simplified to what a feed needs to judge).
//!
//! Known here, in their short and long spellings (`net45`, `net4.5`,
//! `.NETFramework4.5`, `.NETFramework,Version=v4.5,Profile=Client`):
//!
//! - .NET Framework `net11` … `net481` (the Client profile is the full
//!   framework, as NuGet treats it);
//! - .NET Standard `netstandard1.0` … `netstandard2.1`;
//! - .NET Core and .NET 5+: `netcoreapp1.0` … `netcoreapp3.1`, `net5.0` …,
//!   with a platform (`net6.0-windows`, `net8.0-android34.0`);
//! - Windows Store `win8`/`netcore45`, `win81`/`netcore451`, `netcore50`;
//!   UWP `uap10.0[.BUILD]`; Windows Phone `wpa81` and Silverlight `wp7` …
//!   `wp81`; Silverlight `sl4`, `sl5`; Tizen `tizen3` …;
//! - portable class library profiles: `portable-net45+win8+wpa81` (a list
//!   of frameworks, Xamarin and Mono members being optional),
//!   `portable-Profile111`, `.NETPortable,Version=v0.0,Profile=Profile111`.
//!
//! Anything else (`monoandroid10`, `xamarin.ios10`, `net35-cf`, `dnx451`,
//! a misspelling) is unknown: nothing is filtered by it.
//!
//! The rules, for a project targeting `P` and a package asset built for `A`:
//!
//! - same family: `A`'s version is not above `P`'s; a .NET 5+ asset with a
//!   platform needs the project's platform, at that platform version or
//!   later (`net6.0-windows` serves `net8.0-windows`, not `net8.0`);
//! - `A` .NET Standard: `P` implements that version or a later one (the
//!   .NET Standard table as NuGet applies it, NuGet.Client's
//!   `DefaultFrameworkMappings`: `net45` 1.1, `net451` 1.2, `net46` 1.3,
//!   `net461` 2.0, `netcoreapp1.x` 1.6, `netcoreapp2.x` 2.0,
//!   `netcoreapp3.x` and `net5.0`+ 2.1, `win8` 1.1, `win81` and `wpa81`
//!   1.2, `netcore50` 1.4, `wp8` and `wp81` 1.0, `uap10.0` 1.4 and
//!   `uap10.0.15064` 2.0, `tizen3` 1.6, `tizen4` 2.0, `tizen6` 2.1);
//! - UWP uses Windows 8/8.1, `netcore50` and `wpa81` assets; a `net6.0`+
//!   project for the `tizen` platform uses Tizen assets;
//! - `A` portable: `P` is compatible with one of the profile's frameworks;
//! - `P` portable: an `A` portable that covers every framework of `P`'s
//!   profile, or a .NET Standard the profile maps to (`Profile7` 1.1,
//!   `Profile259` 1.0, …).

/// A framework version, up to four numbers (`4.7.2` → `[4, 7, 2, 0]`).
type Ver = [u32; 4];

/// A target framework NuGet knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framework {
    /// .NET Framework (`.NETFramework`).
    Net(Ver),
    /// .NET Standard.
    Standard(Ver),
    /// .NET Core and .NET 5+ (`.NETCoreApp`), with a platform from 5.0 on
    /// (lowercase name, its version).
    Core(Ver, Option<(String, Ver)>),
    /// Windows Store apps (`.NETCore`: `win8` = 4.5, `win81` = 4.5.1,
    /// `netcore50` = 5.0).
    Store(Ver),
    /// Universal Windows Platform.
    Uap(Ver),
    /// Windows Phone apps (`wpa81`).
    PhoneApp(Ver),
    /// Windows Phone Silverlight (`wp7` … `wp81`).
    Phone(Ver),
    /// Silverlight.
    Silverlight(Ver),
    /// Tizen.
    Tizen(Ver),
    /// A portable class library profile: the frameworks it runs on
    /// (optional members, such as Xamarin's, left out) and its profile
    /// number when it is one NuGet names.
    Portable(Vec<Framework>, Option<u32>),
}

/// The portable profiles NuGet knows, with the frameworks each covers.
const PROFILES: &[(u32, &[&str])] = &[
    (2, &["net40", "sl4", "win8", "wp7"]),
    (3, &["net40", "sl4"]),
    (4, &["net45", "sl4", "win8", "wp7"]),
    (5, &["net40", "win8"]),
    (6, &["net403", "win8"]),
    (7, &["net45", "win8"]),
    (14, &["net40", "sl5"]),
    (18, &["net403", "sl4"]),
    (19, &["net403", "sl5"]),
    (23, &["net45", "sl4"]),
    (24, &["net45", "sl5"]),
    (31, &["win81", "wp81"]),
    (32, &["win81", "wpa81"]),
    (36, &["net40", "sl4", "win8", "wp8"]),
    (37, &["net40", "sl5", "win8"]),
    (41, &["net403", "sl4", "win8"]),
    (42, &["net403", "sl5", "win8"]),
    (44, &["net451", "win81"]),
    (46, &["net45", "sl4", "win8"]),
    (47, &["net45", "sl5", "win8"]),
    (49, &["net45", "wp8"]),
    (78, &["net45", "win8", "wp8"]),
    (84, &["wp81", "wpa81"]),
    (88, &["net40", "sl4", "win8", "wp75"]),
    (92, &["net40", "win8", "wpa81"]),
    (95, &["net403", "sl4", "win8", "wp7"]),
    (96, &["net403", "sl4", "win8", "wp75"]),
    (102, &["net403", "win8", "wpa81"]),
    (104, &["net45", "sl4", "win8", "wp75"]),
    (111, &["net45", "win8", "wpa81"]),
    (136, &["net40", "sl5", "win8", "wp8"]),
    (143, &["net403", "sl4", "win8", "wp8"]),
    (147, &["net403", "sl5", "win8", "wp8"]),
    (151, &["net451", "win81", "wpa81"]),
    (154, &["net45", "sl4", "win8", "wp8"]),
    (157, &["win81", "wp81", "wpa81"]),
    (158, &["net45", "sl5", "win8", "wp8"]),
    (225, &["net40", "sl5", "win8", "wpa81"]),
    (240, &["net403", "sl5", "win8", "wpa81"]),
    (255, &["net45", "sl5", "win8", "wpa81"]),
    (259, &["net45", "win8", "wpa81", "wp8"]),
    (328, &["net40", "sl5", "win8", "wpa81", "wp8"]),
    (336, &["net403", "sl5", "win8", "wpa81", "wp8"]),
    (344, &["net45", "sl5", "win8", "wpa81", "wp8"]),
];

/// The .NET Standard a portable profile's project may use (the .NET
/// Standard documentation's "PCL compatibility" table).
const PROFILE_STANDARD: &[(u32, Ver)] = &[
    (7, [1, 1, 0, 0]),
    (31, [1, 0, 0, 0]),
    (32, [1, 2, 0, 0]),
    (44, [1, 2, 0, 0]),
    (49, [1, 0, 0, 0]),
    (78, [1, 0, 0, 0]),
    (84, [1, 0, 0, 0]),
    (111, [1, 1, 0, 0]),
    (151, [1, 2, 0, 0]),
    (157, [1, 0, 0, 0]),
    (259, [1, 0, 0, 0]),
];

const fn v(a: u32, b: u32) -> Ver {
    [a, b, 0, 0]
}

/// `45` → 4.5, `451` → 4.5.1, `4.7.2`, `10.0.16299`; empty → `None`.
/// Undotted versions take one digit per number (NuGet's short form).
fn parse_version(digits: &str) -> Option<Ver> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let parts: Vec<u32> = if digits.contains('.') {
        digits.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?
    } else {
        digits.bytes().map(|b| u32::from(b - b'0')).collect()
    };
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut out = [0; 4];
    out[..parts.len()].copy_from_slice(&parts);
    Some(out)
}

impl Framework {
    /// Parses a framework as nuspecs and clients write it, short or long;
    /// `None` for one NuGet does not know or this does not judge.
    pub fn parse(name: &str) -> Option<Self> {
        let lower = name.trim().to_ascii_lowercase();
        if lower.contains(',') {
            return Self::parse_long(&lower);
        }
        let (head, tail) = match lower.split_once('-') {
            Some((h, t)) => (h, Some(t)),
            None => (lower.as_str(), None),
        };
        // The identifier: letters and dots; then the version.
        let split = head.find(|c: char| c.is_ascii_digit()).unwrap_or(head.len());
        let (ident, digits) = head.split_at(split);
        Self::build(ident, digits, tail)
    }

    /// `.NETFramework,Version=v4.5,Profile=Client` and the like.
    fn parse_long(lower: &str) -> Option<Self> {
        let mut parts = lower.split(',').map(str::trim);
        let ident = parts.next()?;
        let mut version = "";
        let mut profile = None;
        for p in parts {
            let (k, val) = p.split_once('=')?;
            match k.trim() {
                "version" => version = val.trim().trim_start_matches('v'),
                "profile" => profile = Some(val.trim()),
                _ => return None,
            }
        }
        Self::build(ident, version, profile)
    }

    /// A framework from its identifier (lowercase, `.net…` or short),
    /// version digits and what followed a `-` (profile or platform).
    fn build(ident: &str, digits: &str, tail: Option<&str>) -> Option<Self> {
        let version = parse_version(digits);
        let no_tail = |f: Framework| tail.is_none().then_some(f);
        match ident {
            "net" | ".netframework" | "netframework" => {
                let ver = version?;
                if ver[0] >= 5 {
                    // .NET 5 and later: .NETCoreApp, maybe with a platform.
                    return Some(Framework::Core(ver, platform(tail)?));
                }
                match tail {
                    None | Some("client" | "full") => Some(Framework::Net(ver)),
                    _ => None,
                }
            }
            "netstandard" | ".netstandard" => no_tail(Framework::Standard(version?)),
            "netcoreapp" | ".netcoreapp" => {
                let ver = version?;
                if ver[0] >= 5 {
                    Some(Framework::Core(ver, platform(tail)?))
                } else {
                    no_tail(Framework::Core(ver, None))
                }
            }
            "netcore" | ".netcore" => no_tail(Framework::Store(version.unwrap_or(v(4, 5)))),
            "win" | "windows" => {
                let ver = match version {
                    None => v(4, 5),
                    Some(w) if w == v(8, 0) => v(4, 5),
                    Some(w) if w == v(8, 1) => [4, 5, 1, 0],
                    Some(_) => return None,
                };
                no_tail(Framework::Store(ver))
            }
            "uap" => no_tail(Framework::Uap(version.unwrap_or(v(10, 0)))),
            "wpa" | "windowsphoneapp" => no_tail(Framework::PhoneApp(version.unwrap_or(v(8, 1)))),
            "wp" | "windowsphone" => no_tail(Framework::Phone(version.unwrap_or(v(7, 0)))),
            "sl" | "silverlight" => no_tail(Framework::Silverlight(version?)),
            // NuGet takes a bare `tizen` as `tizen3` (its equivalence
            // `tizen <-> tizen3`).
            "tizen" => no_tail(Framework::Tizen(version.unwrap_or(v(3, 0)))),
            "portable" | ".netportable" => portable(tail?),
            _ => None,
        }
    }

    /// The newest .NET Standard this framework implements, if any.
    fn standard(&self) -> Option<Ver> {
        let at_least = |ver: &Ver, min: Ver| *ver >= min;
        match self {
            Framework::Standard(s) => Some(*s),
            Framework::Net(n) if at_least(n, [4, 6, 1, 0]) => Some(v(2, 0)),
            Framework::Net(n) if at_least(n, v(4, 6)) => Some(v(1, 3)),
            Framework::Net(n) if at_least(n, [4, 5, 1, 0]) => Some(v(1, 2)),
            Framework::Net(n) if at_least(n, v(4, 5)) => Some(v(1, 1)),
            Framework::Net(_) => None,
            Framework::Core(c, _) if at_least(c, v(3, 0)) => Some(v(2, 1)),
            Framework::Core(c, _) if at_least(c, v(2, 0)) => Some(v(2, 0)),
            Framework::Core(_, _) => Some(v(1, 6)),
            // netcore50 -> netstandard1.4 (NuGet.Client's mappings; its
            // compatibility tests: netcore50 takes 1.4, not 1.5).
            Framework::Store(s) if at_least(s, v(5, 0)) => Some(v(1, 4)),
            Framework::Store(s) if at_least(s, [4, 5, 1, 0]) => Some(v(1, 2)),
            Framework::Store(_) => Some(v(1, 1)),
            // "UAP 10.0.15064.0 projects support NETStandard2.0" (NuGet.Client;
            // Microsoft Learn's .NET Standard table names 10.0.16299 as
            // the first UWP to run it, but NuGet resolves from 15064).
            Framework::Uap(u) if at_least(u, [10, 0, 15064, 0]) => Some(v(2, 0)),
            Framework::Uap(_) => Some(v(1, 4)),
            Framework::PhoneApp(_) => Some(v(1, 2)),
            Framework::Phone(p) if at_least(p, v(8, 0)) => Some(v(1, 0)),
            Framework::Phone(_) | Framework::Silverlight(_) => None,
            Framework::Tizen(t) if at_least(t, v(6, 0)) => Some(v(2, 1)),
            Framework::Tizen(t) if at_least(t, v(4, 0)) => Some(v(2, 0)),
            // NuGet maps Tizen from tizen3 on; nothing older.
            Framework::Tizen(t) if at_least(t, v(3, 0)) => Some(v(1, 6)),
            Framework::Tizen(_) => None,
            Framework::Portable(_, profile) => PROFILE_STANDARD
                .iter()
                .find(|(p, _)| Some(*p) == *profile)
                .map(|(_, s)| *s),
        }
    }

    /// Whether a project targeting `self` can use an asset built for
    /// `asset`.
    pub fn runs(&self, asset: &Framework) -> bool {
        match (self, asset) {
            (Framework::Portable(project, _), Framework::Portable(built, _)) => {
                project.len() <= built.len() && project.iter().all(|p| built.iter().any(|b| p.runs_plain(b)))
            }
            (Framework::Portable(..), Framework::Standard(s)) => self.standard().is_some_and(|t| s <= &t),
            (Framework::Portable(..), _) => false,
            (_, Framework::Portable(built, _)) => built.iter().any(|b| self.runs_plain(b)),
            _ => self.runs_plain(asset),
        }
    }

    /// [`Framework::runs`] between two frameworks that are not portable.
    fn runs_plain(&self, asset: &Framework) -> bool {
        use Framework as F;
        match (self, asset) {
            (_, F::Standard(s)) => self.standard().is_some_and(|t| s <= &t),
            (F::Net(p), F::Net(a))
            | (F::Store(p), F::Store(a))
            | (F::Uap(p), F::Uap(a))
            | (F::PhoneApp(p), F::PhoneApp(a))
            | (F::Phone(p), F::Phone(a))
            | (F::Silverlight(p), F::Silverlight(a))
            | (F::Tizen(p), F::Tizen(a)) => a <= p,
            (F::Core(p, project_platform), F::Core(a, asset_platform)) => {
                a <= p
                    && match asset_platform {
                        None => true,
                        Some((name, version)) => project_platform
                            .as_ref()
                            .is_some_and(|(n, pv)| n == name && version <= pv),
                    }
            }
            // UWP uses what was built for Windows 8/8.1, netcore50 and
            // Windows Phone 8.1 apps.
            (F::Uap(_), F::Store(a)) => a <= &[5, 0, 0, 0],
            (F::Uap(_), F::PhoneApp(_)) => true,
            // A .NET 6+ project for the Tizen platform uses Tizen assets of
            // any version (NuGet.Client's CompatibilityProvider: for a
            // net6.0+ platform project, a `tizen` candidate is compatible
            // when the platform is `tizen`).
            (F::Core(p, Some((platform, _))), F::Tizen(_)) => *p >= v(6, 0) && platform == "tizen",
            _ => false,
        }
    }
}

/// The platform of a .NET 5+ framework (`windows`, `windows10.0.19041`,
/// `android34.0`): `Some(None)` without one, `None` if it is not one.
fn platform(tail: Option<&str>) -> Option<Option<(String, Ver)>> {
    let Some(tail) = tail else {
        return Some(None);
    };
    let split = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
    let (name, digits) = tail.split_at(split);
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }
    let version = if digits.is_empty() {
        [0; 4]
    } else {
        // Platform versions are always dotted (`10.0.19041`, `34.0`).
        let parts: Vec<u32> = digits.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
        if parts.len() > 4 {
            return None;
        }
        let mut out = [0; 4];
        out[..parts.len()].copy_from_slice(&parts);
        out
    };
    Some(Some((name.to_owned(), version)))
}

/// `Profile111`, or `net45+win8+wpa81` (members NuGet takes as optional,
/// Xamarin's and Mono's, and members it does not know are left out).
fn portable(profile: &str) -> Option<Framework> {
    let known =
        |names: &[&str]| -> Vec<Framework> { names.iter().filter_map(|n| Framework::parse(n)).collect() };
    if let Some(n) = profile.strip_prefix("profile") {
        let n: u32 = n.parse().ok()?;
        let (_, names) = PROFILES.iter().find(|(p, _)| *p == n)?;
        return Some(Framework::Portable(known(names), Some(n)));
    }
    let members: Vec<Framework> = profile
        .split('+')
        .filter_map(Framework::parse)
        .filter(|f| !matches!(f, Framework::Portable(..)))
        .collect();
    if members.is_empty() {
        return None;
    }
    // A list naming a profile's frameworks is that profile, whatever the
    // order: kept in the profile's order, so equal profiles are equal.
    let named = PROFILES.iter().find_map(|(p, names)| {
        let listed = known(names);
        (listed.len() == members.len() && listed.iter().all(|l| members.contains(l))).then_some((*p, listed))
    });
    Some(match named {
        Some((number, listed)) => Framework::Portable(listed, Some(number)),
        None => Framework::Portable(members, None),
    })
}

/// Whether a project targeting `project` can use an asset built for
/// `asset`, both as NuGet writes them; `None` when either is unknown here.
pub fn compatible(project: &str, asset: &str) -> Option<bool> {
    Some(Framework::parse(project)?.runs(&Framework::parse(asset)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_in_their_short_and_long_spellings() {
        let net45 = Some(Framework::Net(v(4, 5)));
        for n in [
            "net45",
            "net4.5",
            "NET45",
            ".NETFramework4.5",
            ".NETFramework,Version=v4.5",
            "net45-client",
            ".NETFramework,Version=v4.5,Profile=Client",
        ] {
            assert_eq!(Framework::parse(n), net45, "{n}");
        }
        assert_eq!(Framework::parse("net472"), Some(Framework::Net([4, 7, 2, 0])));
        assert_eq!(Framework::parse("net50"), Some(Framework::Core(v(5, 0), None)));
        assert_eq!(
            Framework::parse("net6.0-windows10.0.19041"),
            Some(Framework::Core(
                v(6, 0),
                Some(("windows".into(), [10, 0, 19041, 0]))
            ))
        );
        assert_eq!(
            Framework::parse(".NETCoreApp3.1"),
            Some(Framework::Core(v(3, 1), None))
        );
        assert_eq!(
            Framework::parse(".NETStandard,Version=v2.0"),
            Some(Framework::Standard(v(2, 0)))
        );
        assert_eq!(Framework::parse("win81"), Framework::parse("netcore451"));
        assert_eq!(Framework::parse("win8"), Framework::parse("netcore45"));
        assert_eq!(
            Framework::parse("uap10.0.16299"),
            Some(Framework::Uap([10, 0, 16299, 0]))
        );
        // Portable: by list (any order, optional members dropped) or by number.
        let p111 = Framework::parse("portable-Profile111").unwrap();
        assert_eq!(p111, Framework::parse("portable-win8+wpa81+net45").unwrap());
        assert_eq!(
            Framework::parse("portable-net45+win8+wpa81+MonoAndroid10+MonoTouch10+Xamarin.iOS10"),
            Some(p111.clone())
        );
        assert_eq!(
            Framework::parse(".NETPortable,Version=v0.0,Profile=Profile111"),
            Some(p111)
        );
        for unknown in [
            "monoandroid10",
            "MonoAndroid7.0",
            "xamarin.ios10",
            "xamarinios10",
            "net35-cf",
            "dnx451",
            "net",
            "netcoreapp3.1-windows",
            "net6.0-Windows!",
            "portable-Profile1",
            "portable-monoandroid10+xamarinios10",
            "",
        ] {
            assert_eq!(Framework::parse(unknown), None, "{unknown}");
        }
    }

    /// (asset, project, compatible?): the rules of Microsoft Learn's
    /// "Target frameworks" and ".NET Standard" pages, case by case.
    const TABLE: &[(&str, &str, bool)] = &[
        // .NET Framework: an asset for an older version serves a newer one.
        ("net20", "net48", true),
        ("net45", "net45", true),
        ("net45", "net40", false),
        ("net451", "net45", false),
        ("net40-client", "net40", true),
        ("net40", "net40-client", true),
        ("net48", "net6.0", false),
        ("net45", "netstandard2.0", false),
        // .NET Standard: the implementation table.
        ("netstandard1.0", "net45", true),
        ("netstandard1.1", "net45", true),
        ("netstandard1.2", "net45", false),
        ("netstandard1.2", "net451", true),
        ("netstandard1.3", "net46", true),
        ("netstandard1.4", "net46", false),
        ("netstandard2.0", "net461", true),
        ("netstandard2.0", "net472", true),
        ("netstandard2.1", "net48", false),
        ("netstandard2.0", "net45", false),
        ("netstandard1.6", "netcoreapp1.0", true),
        ("netstandard2.0", "netcoreapp1.1", false),
        ("netstandard2.0", "netcoreapp2.0", true),
        ("netstandard2.1", "netcoreapp2.2", false),
        ("netstandard2.1", "netcoreapp3.0", true),
        ("netstandard2.1", "net5.0", true),
        ("netstandard2.1", "net8.0-windows", true),
        ("netstandard2.2", "net5.0", false),
        ("netstandard1.1", "win8", true),
        ("netstandard1.2", "win8", false),
        ("netstandard1.2", "win81", true),
        ("netstandard1.2", "wpa81", true),
        ("netstandard1.0", "wp8", true),
        ("netstandard1.1", "wp8", false),
        ("netstandard1.0", "sl5", false),
        ("netstandard1.4", "uap10.0", true),
        ("netstandard2.0", "uap10.0", false),
        ("netstandard2.0", "uap10.0.16299", true),
        // NuGet.Client DefaultFrameworkMappings: "UAP 10.0.15064.0 projects
        // support NETStandard2.0" (CompatibilityTests: uap10.0.15064.0 takes
        // netstandard2.0, not 2.1); below it UAP stays at 1.4.
        ("netstandard2.0", "uap10.0.15064", true),
        ("netstandard2.1", "uap10.0.15064", false),
        ("netstandard2.0", "uap10.0.14393", false),
        ("netstandard1.4", "uap10.0.14393", true),
        // "netcore50 -> dotnet5.5, netstandard1.4" (DefaultFrameworkMappings;
        // CompatibilityTests: netcore50 takes netstandard1.4, not 1.5).
        ("netstandard1.4", "netcore50", true),
        ("netstandard1.5", "netcore50", false),
        // "wp8, wp81 -> netstandard1.0"; Silverlight none.
        ("netstandard1.0", "wp81", true),
        ("netstandard1.1", "wp81", false),
        // Tizen: "Tizen3 projects support NETStandard1.6", Tizen4 2.0,
        // Tizen6 2.1; a bare `tizen` is `tizen3` ("tizen <-> tizen3").
        ("netstandard1.6", "tizen3", true),
        ("netstandard2.0", "tizen3", false),
        ("netstandard1.6", "tizen", true),
        ("netstandard2.0", "tizen4", true),
        ("netstandard2.1", "tizen4", false),
        ("netstandard2.1", "tizen6", true),
        ("netstandard1.3", "netstandard2.0", true),
        ("netstandard2.0", "netstandard1.6", false),
        // .NET Core and .NET 5+.
        ("netcoreapp2.1", "netcoreapp3.1", true),
        ("netcoreapp3.1", "netcoreapp2.1", false),
        ("netcoreapp3.1", "net5.0", true),
        ("net5.0", "net8.0", true),
        ("net8.0", "net6.0", false),
        ("net6.0", "net48", false),
        // Platforms: a platform asset needs that platform; a neutral one
        // serves every platform.
        ("net6.0", "net6.0-windows", true),
        ("net6.0-windows", "net6.0", false),
        ("net6.0-windows", "net8.0-windows", true),
        ("net6.0-windows", "net8.0-android", false),
        ("net7.0-windows", "net6.0-windows", false),
        ("net6.0-windows10.0.19041", "net6.0-windows10.0.17763", false),
        ("net6.0-windows10.0.17763", "net6.0-windows10.0.19041", true),
        ("net6.0-android31.0", "net7.0-android33.0", true),
        // NuGet.Client CompatibilityTests: "net5.0-<platform><lowVersion> is
        // compatible with net5.0-<platform><higherVersion>", not the reverse.
        ("net5.0-android8.0", "net5.0-android9.0", true),
        ("net5.0-ios15.0", "net5.0-ios14.0", false),
        ("net5.0-android", "net5.0-ios", false),
        // A net6.0+ Tizen project uses Tizen assets (CompatibilityTests:
        // `net6.0-tizen9.0` takes `tizen9.0`); no other platform does, and
        // net5.0 is before that rule.
        ("tizen9.0", "net6.0-tizen9.0", true),
        ("tizen4.0", "net8.0-tizen", true),
        ("tizen9.0", "net6.0-android", false),
        ("tizen4.0", "net6.0", false),
        ("tizen4.0", "net5.0-tizen", false),
        // Windows Store, UWP, Windows Phone, Silverlight.
        ("win8", "win81", true),
        ("win81", "win8", false),
        ("netcore45", "win8", true),
        ("win81", "uap10.0", true),
        ("wpa81", "uap10.0", true),
        ("uap10.0", "win81", false),
        // CompatibilityTests: uap10.0 takes netcore50 (one way), netcore50
        // takes win81 and win8 but not wpa81.
        ("netcore50", "uap10.0", true),
        ("uap10.0", "netcore50", false),
        ("win81", "netcore50", true),
        ("wpa81", "netcore50", false),
        ("netcore50", "win81", false),
        ("wp8", "wp81", true),
        ("wp81", "wpa81", false),
        ("sl4", "sl5", true),
        ("sl5", "net45", false),
        // Portable assets serve a project that runs one of their frameworks.
        ("portable-net45+win8+wpa81", "net45", true),
        ("portable-net45+win8+wpa81", "net48", true),
        ("portable-net45+win8+wpa81", "net40", false),
        ("portable-net45+win8+wpa81", "win81", true),
        ("portable-net45+win8+wpa81", "uap10.0", true),
        ("portable-Profile259", "wp8", true),
        ("portable-Profile259", "sl5", false),
        ("portable-net45+win8+wpa81", "netstandard2.0", false),
        ("portable-net45+win8+wpa81", "netcoreapp3.1", false),
        ("portable-net40+sl5", "net45", true),
        // Portable projects: the asset's profile covers each of theirs, or
        // a .NET Standard their profile maps to.
        ("portable-net45+win8+wpa81+wp8", "portable-net45+win8", true),
        ("portable-net45+win8", "portable-net45+win8+wpa81", false),
        ("portable-net40+win8", "portable-net45+win8", true),
        ("netstandard1.1", "portable-Profile111", true),
        ("netstandard1.2", "portable-Profile111", false),
        ("netstandard1.0", "portable-Profile259", true),
        ("netstandard1.2", "portable-Profile151", true),
        ("net45", "portable-net45+win8", false),
    ];

    #[test]
    fn compatibility_follows_the_documented_table() {
        let mut wrong = Vec::new();
        for (asset, project, expected) in TABLE {
            match compatible(project, asset) {
                Some(got) if got == *expected => {}
                got => wrong.push(format!(
                    "{asset} for a {project} project: {got:?}, not {expected}"
                )),
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn unknown_frameworks_are_not_judged() {
        for (asset, project) in [
            ("monoandroid10", "net45"),
            ("net45", "monoandroid10"),
            ("xamarin.ios10", "net6.0-ios"),
            ("netstandard2.0", "xamarinios10"),
        ] {
            assert_eq!(compatible(project, asset), None, "{asset} / {project}");
        }
    }
}

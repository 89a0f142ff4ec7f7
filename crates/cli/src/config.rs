//! The node's configuration in layers: a preset, then `--config FILE` (TOML, the field
//! names of `plumcast::NodeConfig`), then `PLUMCAST_*` environment variables, then the
//! command line's flags; each later layer wins. `plumcast config print` shows the result
//! with where each value came from.
//!
//! Durations are written as people write them (`"80ms"`, `"5s"`, `"1h 30m"`, parsed by
//! `humantime`). A key that `NodeConfig` does not have is an error that names it.
//! Environment variables name a field by its path, sections separated by two
//! underscores: `PLUMCAST_CLUSTER=prod`,
//! `PLUMCAST_PROTOCOL__MEMBERSHIP__SHUFFLE_INTERVAL=5s`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use plumcast::NodeConfig;
use serde_json::Value;

/// Environment variables starting with `PLUMCAST_` that are not settings.
const NOT_SETTINGS: &[&str] = &["PLUMCAST_SIM_BENCH_SMALL"];

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The preset (its name).
    Preset(&'static str),
    /// A config file.
    File(PathBuf),
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag (its name).
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Preset(p) => write!(f, "preset {p}"),
            Self::File(p) => write!(f, "file {}", p.display()),
            Self::Env(v) => write!(f, "environment {v}"),
            Self::Flag(n) => write!(f, "flag --{n}"),
        }
    }
}

/// A configuration being built, layer by layer.
#[derive(Clone, Debug)]
pub struct Layered {
    value: Value,
    sources: BTreeMap<String, Source>,
}

/// Whether `v` is a serialized `Duration` (`{"secs": …, "nanos": …}`).
fn is_duration(v: &Value) -> bool {
    v.as_object().is_some_and(|m| m.len() == 2 && m.contains_key("secs") && m.contains_key("nanos"))
}

fn duration_value(d: Duration) -> Value {
    serde_json::json!({"secs": d.as_secs(), "nanos": d.subsec_nanos()})
}

fn parse_duration(s: &str, what: &str) -> anyhow::Result<Value> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| anyhow!("{what}: {s:?} is not a duration ({e}; write e.g. \"80ms\", \"5s\", \"2m\")"))?;
    Ok(duration_value(d))
}

/// Every leaf path of `v` (a duration is a leaf).
fn leaves(v: &Value, path: &mut Vec<String>, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if !is_duration(v) => {
            for (k, x) in m {
                path.push(k.clone());
                leaves(x, path, out);
                path.pop();
            }
        }
        _ => out.push(path.join(".")),
    }
}

impl Layered {
    /// `NodeConfig::default()` with the protocol of `preset`.
    pub fn preset(name: &'static str, protocol: plumcast::proto::Config) -> anyhow::Result<Self> {
        let mut config = NodeConfig::default();
        config.protocol = protocol;
        let value = serde_json::to_value(&config).context("serializing the preset")?;
        let mut all = Vec::new();
        leaves(&value, &mut Vec::new(), &mut all);
        let sources = all.into_iter().map(|p| (p, Source::Preset(name))).collect();
        Ok(Self { value, sources })
    }

    /// Lay the TOML file at `path` over what is there.
    ///
    /// # Errors
    /// The file cannot be read or is not TOML; a key `NodeConfig` does not have; a
    /// duration that does not parse.
    pub fn file(&mut self, path: &Path) -> anyhow::Result<()> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading the config file {}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("the config file {} is not valid TOML", path.display()))?;
        let over = serde_json::to_value(table).context("converting the TOML")?;
        let src = Source::File(path.to_path_buf());
        let mut base = std::mem::take(&mut self.value);
        let r = self.overlay(&mut base, over, &mut Vec::new(), &src);
        self.value = base;
        r
    }

    /// Apply the `PLUMCAST_*` variables among `vars`.
    ///
    /// # Errors
    /// A variable that names no field, or whose value does not fit the field.
    pub fn env(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<()> {
        let mut vars: Vec<(String, String)> = vars.into_iter().filter(|(k, _)| k.starts_with("PLUMCAST_")).collect();
        vars.sort();
        for (name, raw) in vars {
            if NOT_SETTINGS.contains(&name.as_str()) {
                continue;
            }
            let path: Vec<String> = name["PLUMCAST_".len()..].split("__").map(str::to_lowercase).collect();
            let dotted = path.join(".");
            let base =
                self.get(&path).ok_or_else(|| anyhow!("unknown setting {name}: NodeConfig has no field `{dotted}`"))?;
            let v = from_text(base, &raw).with_context(|| format!("{name}={raw:?}"))?;
            self.set(&path, v, Source::Env(name.clone()))?;
        }
        Ok(())
    }

    /// A flag given on the command line sets `path` (dotted) to `v`.
    pub fn flag(&mut self, path: &str, v: Value, flag: &'static str) -> anyhow::Result<()> {
        let path: Vec<String> = path.split('.').map(String::from).collect();
        self.set(&path, v, Source::Flag(flag))
    }

    /// The effective configuration.
    ///
    /// # Errors
    /// A value of the wrong type, naming its field.
    pub fn config(&self) -> anyhow::Result<NodeConfig> {
        serde_path_to_error::deserialize(self.value.clone())
            .map_err(|e| anyhow!("setting `{}`: {}", e.path(), e.inner()))
    }

    /// Every setting, one a line: `path = value  # source`, durations as people write
    /// them.
    pub fn print(&self) -> String {
        let mut all = Vec::new();
        leaves(&self.value, &mut Vec::new(), &mut all);
        let mut out = String::new();
        for path in all {
            let parts: Vec<String> = path.split('.').map(String::from).collect();
            let v = self.get(&parts).cloned().unwrap_or(Value::Null);
            let shown = if is_duration(&v) {
                let secs = v["secs"].as_u64().unwrap_or(0);
                let nanos = v["nanos"].as_u64().unwrap_or(0) as u32;
                format!("\"{}\"", humantime::format_duration(Duration::new(secs, nanos)))
            } else if v.is_null() {
                "(none)".to_string()
            } else {
                v.to_string()
            };
            let src = self.sources.get(&path).map_or_else(String::new, ToString::to_string);
            out.push_str(&format!("{path} = {shown}  # {src}\n"));
        }
        out
    }

    fn get(&self, path: &[String]) -> Option<&Value> {
        let mut v = &self.value;
        for k in path {
            v = v.as_object()?.get(k)?;
        }
        Some(v)
    }

    fn set(&mut self, path: &[String], v: Value, src: Source) -> anyhow::Result<()> {
        let dotted = path.join(".");
        let mut at = &mut self.value;
        for k in path {
            at = at
                .as_object_mut()
                .and_then(|m| m.get_mut(k))
                .ok_or_else(|| anyhow!("unknown setting `{dotted}` ({src})"))?;
        }
        *at = v;
        self.mark(&dotted, src);
        Ok(())
    }

    /// `path` and every leaf under it now come from `src`.
    fn mark(&mut self, path: &str, src: Source) {
        let mut under = Vec::new();
        if let Some(v) = self.get(&path.split('.').map(String::from).collect::<Vec<_>>()) {
            leaves(v, &mut path.split('.').map(String::from).collect(), &mut under);
        }
        if under.is_empty() {
            under.push(path.to_string());
        }
        for p in under {
            self.sources.insert(p, src.clone());
        }
    }

    fn overlay(&mut self, base: &mut Value, over: Value, path: &mut Vec<String>, src: &Source) -> anyhow::Result<()> {
        let dotted = |path: &[String]| path.join(".");
        match over {
            Value::Object(m) if base.is_object() && !is_duration(base) => {
                for (k, v) in m {
                    path.push(k.clone());
                    let Some(slot) = base.as_object_mut().and_then(|b| b.get_mut(&k)) else {
                        bail!("unknown key `{}` in {src}: NodeConfig has no such field", dotted(path));
                    };
                    self.overlay(slot, v, path, src)?;
                    path.pop();
                }
                Ok(())
            }
            over => {
                if base.is_object() && !is_duration(base) {
                    bail!("`{}` in {src} is a section ([{}]), not a value", dotted(path), dotted(path));
                }
                *base = match (&*base, over) {
                    (b, Value::String(s)) if is_duration(b) => parse_duration(&s, &dotted(path))?,
                    // An unset optional field: a string that reads as a duration is one
                    // (the only optional settings that take strings are addresses).
                    (Value::Null, Value::String(s)) if humantime::parse_duration(&s).is_ok() => {
                        parse_duration(&s, &dotted(path))?
                    }
                    (_, v) => v,
                };
                self.sources.insert(dotted(path), src.clone());
                Ok(())
            }
        }
    }
}

/// An environment variable's text as a value of `base`'s kind.
fn from_text(base: &Value, s: &str) -> anyhow::Result<Value> {
    Ok(match base {
        b if is_duration(b) => parse_duration(s, "duration")?,
        Value::Bool(_) => Value::Bool(s.trim().parse().map_err(|_| anyhow!("expected true or false"))?),
        Value::Number(n) if n.is_u64() => Value::from(s.trim().parse::<u64>().context("expected a whole number")?),
        Value::Number(n) if n.is_i64() => Value::from(s.trim().parse::<i64>().context("expected a whole number")?),
        Value::Number(_) => Value::from(s.trim().parse::<f64>().context("expected a number")?),
        Value::String(_) => Value::String(s.to_string()),
        Value::Array(_) => {
            // A TOML array (`["a:1", "b:2"]`), or a comma-separated list of strings.
            match toml::from_str::<toml::Table>(&format!("v = {s}")) {
                Ok(t) => serde_json::to_value(&t["v"])?,
                Err(_) => Value::Array(
                    s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(|x| Value::String(x.into())).collect(),
                ),
            }
        }
        Value::Null => {
            if humantime::parse_duration(s.trim()).is_ok() {
                parse_duration(s, "duration")?
            } else if let Ok(n) = s.trim().parse::<u64>() {
                Value::from(n)
            } else {
                Value::String(s.to_string())
            }
        }
        Value::Object(_) => bail!("this names a section, not a value"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lan() -> Layered {
        Layered::preset("lan", plumcast::proto::Config::lan()).unwrap()
    }

    fn temp(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("plumcast-config-{}-{name}.toml", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn file_then_environment_then_flags_each_win_and_print_names_the_source() {
        let mut c = lan();
        let f = temp(
            "layers",
            "cluster = \"from-file\"\nmax_connections = 10\n[protocol.membership]\nshuffle_interval = \"80ms\"\n",
        );
        c.file(&f).unwrap();
        c.env([("PLUMCAST_MAX_CONNECTIONS".to_string(), "20".to_string()), ("HOME".to_string(), "/root".to_string())])
            .unwrap();
        c.flag("cluster", Value::String("from-flag".into()), "cluster").unwrap();
        let config = c.config().unwrap();
        assert_eq!(config.cluster, "from-flag");
        assert_eq!(config.max_connections, 20);
        assert_eq!(config.protocol.membership.shuffle_interval, Duration::from_millis(80));
        let printed = c.print();
        assert!(printed.contains("cluster = \"from-flag\"  # flag --cluster"), "{printed}");
        assert!(printed.contains("max_connections = 20  # environment PLUMCAST_MAX_CONNECTIONS"), "{printed}");
        let shuffle = format!("protocol.membership.shuffle_interval = \"80ms\"  # file {}", f.display());
        assert!(printed.contains(&shuffle), "{printed}");
        assert!(printed.contains("sign_messages = true  # preset lan"), "{printed}");
        let _ = std::fs::remove_file(f);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_that_name_them() {
        let f = temp("unknown", "[protocol.membership]\nshufle_interval = \"1s\"\n");
        let err = lan().file(&f).unwrap_err().to_string();
        assert!(err.contains("unknown key `protocol.membership.shufle_interval`"), "{err}");
        let f2 = temp("duration", "idle_link_timeout = \"soon\"\n");
        let err = format!("{:#}", lan().file(&f2).unwrap_err());
        assert!(err.contains("idle_link_timeout") && err.contains("not a duration"), "{err}");
        let err = lan().env([("PLUMCAST_NO_SUCH".to_string(), "1".to_string())]).unwrap_err().to_string();
        assert!(err.contains("unknown setting PLUMCAST_NO_SUCH"), "{err}");
        let mut c = lan();
        let f3 = temp("type", "max_connections = \"many\"\n");
        c.file(&f3).unwrap();
        let err = c.config().unwrap_err().to_string();
        assert!(err.contains("setting `max_connections`"), "{err}");
        for p in [f, f2, f3] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn environment_values_take_the_fields_kinds() {
        let mut c = lan();
        c.env([
            ("PLUMCAST_PROTOCOL__BROADCAST__ANTI_ENTROPY_INTERVAL".to_string(), "2s".to_string()),
            ("PLUMCAST_BOOTSTRAP".to_string(), "10.0.0.1:7000, 10.0.0.2:7000".to_string()),
            ("PLUMCAST_SIGN_MESSAGES".to_string(), "false".to_string()),
            ("PLUMCAST_HTTP".to_string(), "127.0.0.1:9100".to_string()),
        ])
        .unwrap();
        let config = c.config().unwrap();
        assert_eq!(config.protocol.broadcast.anti_entropy_interval, Some(Duration::from_secs(2)));
        assert_eq!(config.bootstrap, vec!["10.0.0.1:7000".to_string(), "10.0.0.2:7000".to_string()]);
        assert!(!config.sign_messages);
        assert_eq!(config.http, Some("127.0.0.1:9100".parse().unwrap()));
    }
}

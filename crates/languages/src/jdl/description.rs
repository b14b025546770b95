//! The typed view of a JDL: the attributes SmartDomains acts on, with their
//! types checked. Errors point at the offending value.
//!
//! JDLs carry many attributes for other services (`RetryCount`,
//! `MyProxyServer`, ...); those are kept in `other`, not refused. Our own
//! `VirtualEnvironment` record is checked strictly, so a typo is caught.

use super::ast::{ClassAd, Expr, Value};
use super::error::{JdlError, Span, Spanned};
use super::parser::parse_str;
use sd_request::{EnvironmentRequest, NetworkRequest};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// What a JDL asks for.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JobDescription {
    pub executable: String,
    /// `Arguments = "a b 'c d'"` split like a shell splits words, or a list
    /// of strings taken one argument each.
    pub arguments: Vec<String>,
    /// `Environment = {"NAME=value", ...}`, in order.
    pub process_environment: Vec<(String, String)>,
    pub std_input: Option<String>,
    pub std_output: Option<String>,
    pub std_error: Option<String>,
    pub input_sandbox: Vec<String>,
    pub output_sandbox: Vec<String>,
    /// `VirtualOrganisation` (or the spelling `VirtualOrganization`).
    pub virtual_organisation: Option<String>,
    pub virtual_environment: Option<EnvironmentRequest>,
    /// Kept as expressions: they are about the other side of the match.
    pub requirements: Option<Expr>,
    pub rank: Option<Expr>,
    /// Every other attribute, by its name as written.
    pub other: BTreeMap<String, Expr>,
}

/// The fields of `VirtualEnvironment`, as documented.
const ENVIRONMENT_FIELDS: [&str; 8] = [
    "Image",
    "Memory",
    "VCPUs",
    "Disk",
    "SaveImage",
    "SaveAs",
    "Hostname",
    "Network",
];

impl JobDescription {
    /// Parses JDL text and checks it; `file` only labels error messages.
    pub fn parse(src: &str, file: &Path) -> Result<Self, JdlError> {
        Self::from_classad(&parse_str(src, file)?, file)
    }

    /// Checks the attributes of a parsed JDL.
    pub fn from_classad(ad: &ClassAd, file: &Path) -> Result<Self, JdlError> {
        let check = Checker { file };
        let mut job = JobDescription::default();
        let mut executable = None;
        let mut vo_attribute: Option<(&str, Span)> = None;
        for attr in ad.iter() {
            let value = &attr.value;
            match attr.name.to_ascii_lowercase().as_str() {
                "executable" => executable = Some(check.non_empty_string("Executable", value)?),
                "arguments" => job.arguments = check.arguments(value)?,
                "environment" => job.process_environment = check.environment(value)?,
                "stdinput" => job.std_input = Some(check.non_empty_string("StdInput", value)?),
                "stdoutput" => job.std_output = Some(check.non_empty_string("StdOutput", value)?),
                "stderror" => job.std_error = Some(check.non_empty_string("StdError", value)?),
                "inputsandbox" => job.input_sandbox = check.file_names("InputSandbox", value)?,
                "outputsandbox" => job.output_sandbox = check.file_names("OutputSandbox", value)?,
                "virtualorganisation" | "virtualorganization" => {
                    // Both spellings at once would be two values for one thing.
                    if let Some((first, span)) = vo_attribute {
                        return Err(check.at(
                            attr.name_span,
                            format!(
                                "{} repeats {first} (defined at {span}); give only one",
                                attr.name
                            ),
                        ));
                    }
                    vo_attribute = Some((&attr.name, attr.name_span));
                    job.virtual_organisation = Some(check.non_empty_string(&attr.name, value)?);
                }
                "virtualenvironment" => {
                    job.virtual_environment = Some(check.environment_request(value)?)
                }
                "requirements" => job.requirements = Some(value.node.clone()),
                "rank" => job.rank = Some(value.node.clone()),
                _ => {
                    job.other.insert(attr.name.clone(), value.node.clone());
                }
            }
        }
        job.executable = executable
            .ok_or_else(|| check.at(ad.span(), "missing required attribute Executable"))?;
        Ok(job)
    }
}

/// Type checks, each reporting at the value it rejects.
struct Checker<'a> {
    file: &'a Path,
}

impl Checker<'_> {
    fn at(&self, span: Span, message: impl Into<String>) -> JdlError {
        JdlError::new(self.file, span, message)
    }

    fn string(&self, what: &str, value: &Spanned<Expr>) -> Result<String, JdlError> {
        match &value.node {
            Expr::Literal(Value::String(s)) => Ok(s.clone()),
            other => Err(self.at(
                value.span,
                format!("{what} must be a string, found {}", other.describe()),
            )),
        }
    }

    fn non_empty_string(&self, what: &str, value: &Spanned<Expr>) -> Result<String, JdlError> {
        let s = self.string(what, value)?;
        if s.is_empty() {
            return Err(self.at(value.span, format!("{what} must not be empty")));
        }
        Ok(s)
    }

    /// A string or a list of strings, each with its position.
    fn strings(&self, what: &str, value: &Spanned<Expr>) -> Result<Vec<(Span, String)>, JdlError> {
        match &value.node {
            Expr::Literal(Value::String(s)) => Ok(vec![(value.span, s.clone())]),
            Expr::List(items) => items
                .iter()
                .map(|item| match &item.node {
                    Expr::Literal(Value::String(s)) => Ok((item.span, s.clone())),
                    other => Err(self.at(
                        item.span,
                        format!("{what} entries must be strings, found {}", other.describe()),
                    )),
                })
                .collect(),
            other => Err(self.at(
                value.span,
                format!(
                    "{what} must be a string or a list of strings, found {}",
                    other.describe()
                ),
            )),
        }
    }

    fn file_names(&self, what: &str, value: &Spanned<Expr>) -> Result<Vec<String>, JdlError> {
        self.strings(what, value)?
            .into_iter()
            .map(|(span, name)| {
                if name.is_empty() {
                    Err(self.at(span, format!("{what} entries must not be empty")))
                } else {
                    Ok(name)
                }
            })
            .collect()
    }

    /// One string is split into words; a list is taken as the words.
    fn arguments(&self, value: &Spanned<Expr>) -> Result<Vec<String>, JdlError> {
        match &value.node {
            Expr::Literal(Value::String(s)) => split_words(s)
                .map_err(|problem| self.at(value.span, format!("Arguments has {problem}"))),
            _ => Ok(self
                .strings("Arguments", value)?
                .into_iter()
                .map(|(_, s)| s)
                .collect()),
        }
    }

    fn environment(&self, value: &Spanned<Expr>) -> Result<Vec<(String, String)>, JdlError> {
        let mut variables: Vec<(String, String)> = vec![];
        for (span, entry) in self.strings("Environment", value)? {
            let Some((name, val)) = entry
                .split_once('=')
                .filter(|(name, _)| is_variable_name(name))
            else {
                return Err(self.at(
                    span,
                    format!(
                        "Environment entry {entry:?} must be NAME=VALUE, NAME made of letters, digits \
                         and '_' and not starting with a digit"
                    ),
                ));
            };
            if variables.iter().any(|(seen, _)| seen == name) {
                return Err(self.at(span, format!("Environment sets {name} twice")));
            }
            variables.push((name.to_string(), val.to_string()));
        }
        Ok(variables)
    }

    fn environment_request(&self, value: &Spanned<Expr>) -> Result<EnvironmentRequest, JdlError> {
        let Expr::Record(record) = &value.node else {
            return Err(self.at(
                value.span,
                format!(
                    "VirtualEnvironment must be a record [ Image = ...; Memory = ...; ... ], found {}",
                    value.node.describe()
                ),
            ));
        };
        let mut request = EnvironmentRequest::default();
        for field in record.iter() {
            let value = &field.value;
            match field.name.to_ascii_lowercase().as_str() {
                "image" => request.image = Some(self.non_empty_string("Image", value)?),
                "memory" => request.memory_mib = Some(self.positive("Memory", " (MiB)", value)?),
                "vcpus" => request.vcpus = Some(self.positive("VCPUs", "", value)?),
                "disk" => request.disk_mib = Some(self.positive("Disk", " (MiB)", value)?),
                "saveimage" => request.save_image = Some(self.boolean("SaveImage", value)?),
                "saveas" => request.save_as = Some(self.non_empty_string("SaveAs", value)?),
                "hostname" => request.hostname = Some(self.non_empty_string("Hostname", value)?),
                "network" => request.networks = self.networks(value)?,
                _ => {
                    let hint = closest(&field.name, &ENVIRONMENT_FIELDS)
                        .map(|known| format!("did you mean {known}? "))
                        .unwrap_or_default();
                    return Err(self.at(
                        field.name_span,
                        format!(
                            "unknown field '{}' in VirtualEnvironment ({hint}known fields: {})",
                            field.name,
                            ENVIRONMENT_FIELDS.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(request)
    }

    /// `Network = "nat"` or `Network = {"nat", "private"}`: the site
    /// networks, one interface each, in order. Admission checks the names.
    fn networks(&self, value: &Spanned<Expr>) -> Result<Vec<NetworkRequest>, JdlError> {
        let names = self.strings("Network", value)?;
        if names.is_empty() {
            return Err(self.at(
                value.span,
                "Network must name at least one network (\"none\" for no network)",
            ));
        }
        names
            .into_iter()
            .map(|(span, name)| {
                if name.is_empty() {
                    Err(self.at(span, "Network entries must not be empty"))
                } else {
                    Ok(NetworkRequest::named(&name))
                }
            })
            .collect()
    }

    /// A positive integer literal that fits `T`.
    fn positive<T: TryFrom<i64>>(
        &self,
        what: &str,
        unit: &str,
        value: &Spanned<Expr>,
    ) -> Result<T, JdlError> {
        match value.node {
            Expr::Literal(Value::Integer(n)) if n > 0 => T::try_from(n).map_err(|_| {
                self.at(
                    value.span,
                    format!("{what} is too large, found integer {n}"),
                )
            }),
            ref other => Err(self.at(
                value.span,
                format!(
                    "{what} must be a positive integer{unit}, found {}",
                    other.describe()
                ),
            )),
        }
    }

    fn boolean(&self, what: &str, value: &Spanned<Expr>) -> Result<bool, JdlError> {
        match value.node {
            Expr::Literal(Value::Boolean(b)) => Ok(b),
            ref other => Err(self.at(
                value.span,
                format!("{what} must be true or false, found {}", other.describe()),
            )),
        }
    }
}

/// Splits a command line into words as a POSIX shell would, without
/// expansions: blanks separate words; `'...'` is literal; in `"..."` a
/// backslash escapes `"`, `\`, `$` and `` ` ``; elsewhere it escapes any
/// character. `''` is an empty word.
fn split_words(line: &str) -> Result<Vec<String>, &'static str> {
    let mut words = vec![];
    let mut word = String::new();
    // Distinguishes an empty quoted word from no word at all.
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("an unterminated single quote"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("an unterminated double quote"),
                        },
                        Some(c) => word.push(c),
                        None => return Err("an unterminated double quote"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.push(chars.next().ok_or("a backslash at the end")?);
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// A shell variable name: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The known name closest to a misspelt one, if close enough to be a typo.
fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    let name = name.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&name, &k.to_ascii_lowercase()), *k))
        .filter(|&(distance, _)| distance <= 2)
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, k)| k)
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, &cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(src: &str) -> JobDescription {
        JobDescription::parse(src, Path::new("job.jdl")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn job_error(src: &str) -> String {
        JobDescription::parse(src, Path::new("job.jdl"))
            .unwrap_err()
            .to_string()
    }

    /// A job with `Executable` and one more attribute.
    fn with(attribute: &str) -> JobDescription {
        job(&format!("Executable = \"run.sh\";\n{attribute}"))
    }

    fn error_with(attribute: &str) -> String {
        job_error(&format!("Executable = \"run.sh\";\n{attribute}"))
    }

    #[test]
    fn minimal_job() {
        let j = job("[ Executable = \"/bin/hostname\"; ]");
        assert_eq!(
            j,
            JobDescription {
                executable: "/bin/hostname".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn attribute_names_ignore_case() {
        let j = job("EXECUTABLE = \"a\"; stdoutput = \"o\"; STDERROR = \"e\"; stdInput = \"i\";");
        assert_eq!(j.executable, "a");
        assert_eq!(j.std_output.as_deref(), Some("o"));
        assert_eq!(j.std_error.as_deref(), Some("e"));
        assert_eq!(j.std_input.as_deref(), Some("i"));
    }

    #[test]
    fn missing_or_bad_executable() {
        assert_eq!(
            job_error("\n[ Arguments = \"x\"; ]"),
            "job.jdl:2:1: missing required attribute Executable"
        );
        assert_eq!(
            job_error(""),
            "job.jdl:1:1: missing required attribute Executable"
        );
        assert_eq!(
            job_error("Executable = 3;"),
            "job.jdl:1:14: Executable must be a string, found integer 3"
        );
        assert_eq!(
            job_error("Executable = \"\";"),
            "job.jdl:1:14: Executable must not be empty"
        );
    }

    #[test]
    fn arguments_split_like_a_shell() {
        let cases: [(&str, &[&str]); 9] = [
            ("", &[]),
            ("   ", &[]),
            ("a  b\tc", &["a", "b", "c"]),
            ("'c d' e", &["c d", "e"]),
            ("\"c d\" 'it''s'", &["c d", "its"]),
            ("'' x", &["", "x"]),
            ("a\\ b", &["a b"]),
            ("\"q\\\"x\\\\y\\z\"", &["q\"x\\y\\z"]),
            ("pre'fix 'post", &["prefix post"]),
        ];
        for (line, words) in cases {
            assert_eq!(split_words(line).unwrap(), words, "{line}");
        }
        assert_eq!(
            split_words("a 'b").unwrap_err(),
            "an unterminated single quote"
        );
        assert_eq!(
            split_words("a \"b").unwrap_err(),
            "an unterminated double quote"
        );
        assert_eq!(split_words("a \\").unwrap_err(), "a backslash at the end");
    }

    #[test]
    fn arguments_as_string_or_list() {
        assert_eq!(
            with(r#"Arguments = "-n 5 'a b'";"#).arguments,
            ["-n", "5", "a b"]
        );
        // JDL escapes come first: \" in the JDL is a shell double quote.
        assert_eq!(
            with(r#"Arguments = "say \"hello world\"";"#).arguments,
            ["say", "hello world"]
        );
        assert_eq!(
            with(r#"Arguments = {"-n", "a b", ""};"#).arguments,
            ["-n", "a b", ""]
        );
        assert_eq!(
            error_with(r#"Arguments = "it's";"#),
            "job.jdl:2:13: Arguments has an unterminated single quote"
        );
        assert_eq!(
            error_with("Arguments = 5;"),
            "job.jdl:2:13: Arguments must be a string or a list of strings, found integer 5"
        );
        assert_eq!(
            error_with("Arguments = {\"a\", 5};"),
            "job.jdl:2:19: Arguments entries must be strings, found integer 5"
        );
    }

    #[test]
    fn environment() {
        let j = with(r#"Environment = {"A=1", "B_2=x y", "_C=a=b", "EMPTY="};"#);
        let expected = [("A", "1"), ("B_2", "x y"), ("_C", "a=b"), ("EMPTY", "")];
        assert_eq!(
            j.process_environment,
            expected.map(|(n, v)| (n.to_string(), v.to_string()))
        );
        assert_eq!(
            with(r#"Environment = "A=1";"#).process_environment,
            [("A".to_string(), "1".to_string())]
        );
        for bad in ["NOEQUALS", "1A=x", "=x", "A-B=x", "A B=x"] {
            assert_eq!(
                error_with(&format!("Environment = {{\"OK=1\", \"{bad}\"}};")),
                format!(
                    "job.jdl:2:24: Environment entry {bad:?} must be NAME=VALUE, NAME made of letters, \
                     digits and '_' and not starting with a digit"
                )
            );
        }
        assert_eq!(
            error_with(r#"Environment = {"A=1", "A=2"};"#),
            "job.jdl:2:23: Environment sets A twice"
        );
    }

    #[test]
    fn sandboxes_take_a_string_or_a_list() {
        let j = with("InputSandbox = \"run.sh\"; OutputSandbox = {\"out\", \"err\"};");
        assert_eq!(j.input_sandbox, ["run.sh"]);
        assert_eq!(j.output_sandbox, ["out", "err"]);
        assert!(with("InputSandbox = {};").input_sandbox.is_empty());
        assert_eq!(
            error_with("OutputSandbox = {\"a\", \"\"};"),
            "job.jdl:2:23: OutputSandbox entries must not be empty"
        );
        assert_eq!(
            error_with("InputSandbox = [ a = 1 ];"),
            "job.jdl:2:16: InputSandbox must be a string or a list of strings, found record [a = 1]"
        );
    }

    #[test]
    fn virtual_organisation_in_either_spelling() {
        assert_eq!(
            with("VirtualOrganisation = \"atlas\";")
                .virtual_organisation
                .as_deref(),
            Some("atlas")
        );
        assert_eq!(
            with("virtualorganization = \"cms\";")
                .virtual_organisation
                .as_deref(),
            Some("cms")
        );
        assert_eq!(
            error_with("VirtualOrganisation = \"a\";\nVirtualOrganization = \"b\";"),
            "job.jdl:3:1: VirtualOrganization repeats VirtualOrganisation (defined at 2:1); give only one"
        );
    }

    #[test]
    fn virtual_environment_record() {
        let j = with(
            "VirtualEnvironment = [ image = \"deb\"; MEMORY = 512; vcpus = 4; Disk = 2048; \
             SaveImage = TRUE; Hostname = \"h1\" ];",
        );
        assert_eq!(
            j.virtual_environment,
            Some(EnvironmentRequest {
                image: Some("deb".into()),
                memory_mib: Some(512),
                vcpus: Some(4),
                disk_mib: Some(2048),
                save_image: Some(true),
                save_as: None,
                hostname: Some("h1".into()),
                networks: vec![],
            })
        );
        assert_eq!(
            with("VirtualEnvironment = [];").virtual_environment,
            Some(EnvironmentRequest::default())
        );
        let networks = |field: &str| {
            with(&format!("VirtualEnvironment = [ {field} ];"))
                .virtual_environment
                .unwrap()
                .networks
        };
        assert_eq!(
            networks("Network = \"nat\""),
            [NetworkRequest::named("nat")]
        );
        assert_eq!(
            networks("network = {\"nat\", \"private\"}"),
            [
                NetworkRequest::named("nat"),
                NetworkRequest::named("private")
            ]
        );
        assert_eq!(with("Memory = \"not ours\";").other.len(), 1);
    }

    #[test]
    fn virtual_environment_errors() {
        let cases = [
            (
                "Memory = \"lots\"",
                "2:33: Memory must be a positive integer (MiB), found string \"lots\"",
            ),
            (
                "Memory = 0",
                "2:33: Memory must be a positive integer (MiB), found integer 0",
            ),
            (
                "Memory = -512",
                "2:33: Memory must be a positive integer (MiB), found integer -512",
            ),
            (
                "Memory = 1.5",
                "2:33: Memory must be a positive integer (MiB), found real 1.5",
            ),
            (
                "Memory = 2 * 1024",
                "2:33: Memory must be a positive integer (MiB), found expression 2 * 1024",
            ),
            (
                "Disk = true",
                "2:31: Disk must be a positive integer (MiB), found boolean true",
            ),
            (
                "VCPUs = 4294967296",
                "2:32: VCPUs is too large, found integer 4294967296",
            ),
            (
                "VCPUs = other.Cpus",
                "2:32: VCPUs must be a positive integer, found attribute reference other.Cpus",
            ),
            (
                "SaveImage = \"yes\"",
                "2:36: SaveImage must be true or false, found string \"yes\"",
            ),
            ("Image = \"\"", "2:32: Image must not be empty"),
            (
                "Hostname = 1",
                "2:35: Hostname must be a string, found integer 1",
            ),
            (
                "Network = 1",
                "2:34: Network must be a string or a list of strings, found integer 1",
            ),
            (
                "Network = {}",
                "2:34: Network must name at least one network (\"none\" for no network)",
            ),
            (
                "Network = {\"nat\", \"\"}",
                "2:42: Network entries must not be empty",
            ),
            (
                "Network = {\"nat\", 3}",
                "2:42: Network entries must be strings, found integer 3",
            ),
            (
                "Netwrok = \"nat\"",
                "2:24: unknown field 'Netwrok' in VirtualEnvironment (did you mean Network? \
                 known fields: Image, Memory, VCPUs, Disk, SaveImage, SaveAs, Hostname, Network)",
            ),
            (
                "Memroy = 1",
                "2:24: unknown field 'Memroy' in VirtualEnvironment (did you mean Memory? \
                 known fields: Image, Memory, VCPUs, Disk, SaveImage, SaveAs, Hostname, Network)",
            ),
            (
                "Flavour = \"big\"",
                "2:24: unknown field 'Flavour' in VirtualEnvironment \
                 (known fields: Image, Memory, VCPUs, Disk, SaveImage, SaveAs, Hostname, Network)",
            ),
        ];
        for (field, expected) in cases {
            assert_eq!(
                error_with(&format!("VirtualEnvironment = [ {field} ];")),
                format!("job.jdl:{expected}"),
                "{field}"
            );
        }
        assert_eq!(
            error_with("VirtualEnvironment = \"debian\";"),
            "job.jdl:2:22: VirtualEnvironment must be a record [ Image = ...; Memory = ...; ... ], \
             found string \"debian\""
        );
    }

    #[test]
    fn requirements_and_rank_stay_expressions() {
        let j = with(
            "Requirements = other.FreeCPUs > 1 && member(\"x\", other.Tags);\nRank = -other.Load;",
        );
        assert_eq!(
            j.requirements.unwrap().to_string(),
            "other.FreeCPUs > 1 && member(\"x\", other.Tags)"
        );
        assert_eq!(j.rank.unwrap().to_string(), "-other.Load");
        assert_eq!(
            with("Requirements = true;").requirements,
            Some(Expr::Literal(Value::Boolean(true)))
        );
    }

    #[test]
    fn unknown_attributes_are_kept() {
        let j = with("RetryCount = 3; MyProxyServer = \"px\"; Foo = a + 1;");
        let kept: Vec<String> = j.other.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        assert_eq!(
            kept,
            ["Foo = a + 1", "MyProxyServer = \"px\"", "RetryCount = 3"]
        );
    }

    #[test]
    fn closest_field_names() {
        assert_eq!(closest("Memroy", &ENVIRONMENT_FIELDS), Some("Memory"));
        assert_eq!(closest("vcpu", &ENVIRONMENT_FIELDS), Some("VCPUs"));
        assert_eq!(closest("HostName", &ENVIRONMENT_FIELDS), Some("Hostname"));
        assert_eq!(closest("Flavour", &ENVIRONMENT_FIELDS), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn realistic_job_description() {
        let src = include_str!("testdata/realistic.jdl");
        insta::assert_yaml_snapshot!("realistic_job", job(src));
    }
}

//! Minimal server-rendered pages, shared by the wrapper's sign-in pages and the apps'
//! dashboards: one layout, one escaping function. Every value that did not come from a string
//! literal goes through [`escape`].

use std::fmt::Write;

/// Escape text for an HTML element body or a double-quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encode a query-string value (RFC 3986 unreserved characters stay as they are).
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// A table (`id` for scripts and tests) of text cells, escaped here; `empty` is shown instead
/// when there are no rows.
pub fn table(id: &str, headers: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    let mut out = format!(r#"<table id="{}"><tr>"#, escape(id));
    for h in headers {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    if rows.is_empty() {
        let _ = write!(out, r#"<p class="muted">{}</p>"#, escape(empty));
    }
    out
}

/// A complete page: `title` is escaped here, `body` is HTML the caller built with [`escape`].
pub fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d2433; }}
main {{ max-width: 46rem; margin: 3rem auto; background: #fff; padding: 2rem 2.5rem;
       border-radius: 10px; box-shadow: 0 1px 4px rgba(0,0,0,.08); }}
h1 {{ font-size: 1.5rem; margin-top: 0; }}
label {{ display: block; margin: .8rem 0 .3rem; font-weight: 600; }}
input[type=email], input[type=password], input[type=text] {{ width: 100%; padding: .55rem;
       box-sizing: border-box; border: 1px solid #c5cad3; border-radius: 6px; font-size: 1rem; }}
button, .button {{ display: inline-block; margin-top: 1rem; padding: .55rem 1.2rem; border: 0;
       border-radius: 6px; background: #2454d6; color: #fff; font-size: 1rem; cursor: pointer;
       text-decoration: none; }}
.secondary {{ background: #e8ebf0; color: #1d2433; }}
.error {{ background: #fdecec; color: #8a1c1c; padding: .7rem 1rem; border-radius: 6px; }}
.muted {{ color: #5d6677; }}
table {{ width: 100%; border-collapse: collapse; margin-top: 1rem; }}
th, td {{ text-align: left; padding: .45rem .3rem; border-bottom: 1px solid #e4e7ec; }}
nav {{ display: flex; gap: 1rem; align-items: center; margin-bottom: 1.2rem; }}
nav form {{ margin-left: auto; }} nav form button {{ margin-top: 0; }}
</style>
</head>
<body>
<main>
{body}
</main>
</body>
</html>
"#,
        title = escape(title),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_encodes_urls() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(
            url_encode("/crm/?a=b c&é"),
            "%2Fcrm%2F%3Fa%3Db%20c%26%C3%A9"
        );
        assert!(page("<x>", "<p>ok</p>").contains("<title>&lt;x&gt;</title>"));
        let t = table("t", &["A"], &[vec!["<b>".into()]], "none");
        assert_eq!(
            t,
            r#"<table id="t"><tr><th>A</th></tr><tr><td>&lt;b&gt;</td></tr></table>"#
        );
        assert!(table("t", &["A"], &[], "none").ends_with(r#"<p class="muted">none</p>"#));
    }
}

//! The status pages' pictures: SVG written on the server (no JavaScript, no
//! build chain), inlined in the pages. Each has a `viewBox` and scales to
//! the page's width; each carries a title and a description for screen
//! readers (and the page a table or list with the same figures); none relies
//! on colour: verdicts are shapes, checkout and lost runs are hatched, every
//! series has a legend in words. Everything drawn from data is escaped here
//! (`svg::esc`): the pages insert these strings as they are.
//!
//! - `svg`: escaping, verdict marks, axes, the `<svg>` element.
//! - `timeline`: a commit's runs per worker slot (the commit page).
//! - `history`: a branch's commits, or one test across commits.
//! - `fleet`: jobs waiting and busy slots over the last hour (workers page).

pub(crate) mod fleet;
pub(crate) mod history;
pub(crate) mod svg;
pub(crate) mod timeline;

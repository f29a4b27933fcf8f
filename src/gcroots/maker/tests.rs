//! The chunk's exchange with the daemon, replies given by hand.

use super::*;

const DIR: &str = "/var/cache/cuirass/gcroots";
const FILE: &str = "/gnu/store/rrrr-cuirass-gc-roots";

fn item(name: &str) -> String {
    format!("/gnu/store/{name:a<32}-{name}")
}

fn strings(items: &[&str]) -> Reply {
    Reply::Strings(items.iter().map(|s| s.to_string()).collect())
}

#[test]
fn valid_items_go_into_one_file_whose_symlink_is_registered() {
    let (a, b, gone) = (item("a"), item("b"), item("gone"));
    let (mut m, first) = Maker::new(Path::new(DIR), vec![a.clone(), gone.clone(), b.clone()]);
    assert_eq!(
        first,
        [Request::QueryValidPaths(vec![a.clone(), gone, b.clone()])]
    );
    assert_eq!(m.file(), None);
    // The daemon refuses a reference to an invalid path: only the
    // valid ones are referred to.
    let Next::Send(add) = m.reply(strings(&[&a, &b])) else {
        panic!("no add-text-to-store")
    };
    assert_eq!(
        add,
        [Request::AddTextToStore {
            name: FILE_NAME.into(),
            text: format!("{}{a}\n{b}\n", text(&[]),),
            references: vec![a.clone(), b.clone()],
        }]
    );
    let link = format!("{DIR}/rrrr-cuirass-gc-roots");
    assert_eq!(
        m.reply(Reply::Path(FILE.into())),
        Next::Link {
            link: PathBuf::from(&link),
            file: FILE.into(),
            then: vec![
                Request::AddIndirectRoot(link),
                Request::SyncWithGc,
                Request::QueryValidPaths(vec![a.clone(), b.clone(), FILE.into()]),
            ],
        }
    );
    assert_eq!(m.file(), Some(FILE), "its symlink may exist from now on");
    assert_eq!(m.reply(Reply::Unit), Next::Wait);
    assert_eq!(m.reply(Reply::Unit), Next::Wait);
    // `a` was collected by a collection that began before the root.
    assert_eq!(
        m.reply(strings(&[&b, FILE])),
        Next::Done {
            file: Some(FILE.into()),
            valid: vec![b],
        }
    );
}

#[test]
fn no_valid_item_makes_no_file() {
    let (mut m, _) = Maker::new(Path::new(DIR), vec![item("gone")]);
    assert_eq!(
        m.reply(strings(&[])),
        Next::Done {
            file: None,
            valid: vec![],
        }
    );
}

#[test]
fn replies_out_of_place_fail_the_chunk() {
    let (mut m, _) = Maker::new(Path::new(DIR), vec![item("a")]);
    assert!(matches!(m.reply(Reply::Unit), Next::Failed(_)));
    // A root file whose name is no store item's.
    let (mut m, _) = Maker::new(Path::new(DIR), vec![item("a")]);
    m.reply(strings(&[&item("a")]));
    assert!(matches!(m.reply(Reply::Path("..".into())), Next::Failed(_)));
    // The root file itself is not valid at the end.
    let (mut m, _) = Maker::new(Path::new(DIR), vec![item("a")]);
    m.reply(strings(&[&item("a")]));
    m.reply(Reply::Path(FILE.into()));
    m.reply(Reply::Unit);
    m.reply(Reply::Unit);
    assert!(matches!(m.reply(strings(&[&item("a")])), Next::Failed(_)));
}

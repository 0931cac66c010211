//! Values that CSV and text handling like to damage survive the store and `igaflow sql`.

use crate::common::*;

#[test]
fn tricky_values_round_trip_through_store_and_sql_csv() {
    let rows: Vec<[&str; 5]> = vec![
        ["007", "Smith, John", "1980-01-01", "1", "comma, inside"],
        [
            "0012",
            "O\"Brien \"Junior\"",
            "1980-02-29",
            "-42",
            "quotes \"here\"",
        ],
        [
            "00013",
            "Line\nbreak",
            "1999-12-31",
            "0",
            "multi\nline\r\nvalue",
        ],
        [
            "E-ß",
            "Zoë Ærøskøbing-Łukasiewicz",
            "2000-06-15",
            "9223372036854775807",
            "日本語のテキスト",
        ],
        [
            "000",
            "  padded  ",
            "1970-01-01",
            "00017",
            "; DROP TABLE person; --",
        ],
        ["x'y", "It's", "2024-02-29", "3", "' OR 1=1 --"],
    ];
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["employee_id", "name", "birth_date", "level", "note"])
        .unwrap();
    for r in &rows {
        w.write_record(r).unwrap();
    }
    let body = w.into_inner().unwrap();

    let env = Env::new();
    env.write_pipeline(&hr_pipeline(""));
    env.write("exports/hr/persons.csv", &body);
    env.run("complete", &[], &[]).expect_code(0);

    let got = env.query(
        "select employee_id, name, cast(birth_date as varchar), level, note from person order by employee_id",
    );
    let mut expected: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let level = r[3].parse::<i64>().unwrap().to_string(); // an int column: 00017 is 17
            vec![r[0].into(), r[1].into(), r[2].into(), level, r[4].into()]
        })
        .collect();
    expected.sort_by(|a, b| a[0].as_bytes().cmp(b[0].as_bytes()));
    assert_eq!(got, expected);

    // The same export again changes nothing: values compare equal after the round trip.
    let again = env.run("complete", &[], &[]);
    again.expect_code(0);
    assert!(again.stdout.contains("no_changes"), "{}", again.stdout);

    // Keys with quotes work in a query (the value is data, never SQL text).
    assert_eq!(
        env.scalar("select name from person where employee_id = 'x''y'"),
        "It's"
    );
}

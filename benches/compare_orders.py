"""compare_orders.py STORE_A STORE_B: the newest Parquet order file of each connector, row by row
in stored order, without run_id and generated_at (Python duckdb)."""
import duckdb,glob,sys
a,b=sys.argv[1],sys.argv[2]
for f in ['ad','erp']:
  r=[]
  for s in [a,b]:
    p=sorted(glob.glob(s+'/_orders/*/'+f+'.parquet'))[-1]
    cols=[c[0] for c in duckdb.sql(f"describe select * from '{p}'").fetchall()]
    keep=[c for c in cols if c not in ('run_id','generated_at')]
    r.append(duckdb.sql(f"select md5(string_agg(t::varchar, '|')) from (select {','.join(keep)} from '{p}') t").fetchall()[0][0])
  print(f, 'parquet', 'same (rows in order, run_id/generated_at left out)' if r[0]==r[1] else 'DIFF', cols)

from blindspot.entry import run

run()

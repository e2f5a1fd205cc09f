-- Entry point of every miltertest run (miltertest_test.go):
-- `miltertest -D SCRIPT=x.lua ... -s run.lua`. miltertest exits 1 on a
-- Lua error but prints nothing; this prints the error with its traceback
-- first, so a failing test says which check failed.
local ok, err = xpcall(dofile, debug.traceback, SCRIPT)
if not ok then
	mt.echo("FAIL: " .. tostring(err))
	error(err)
end

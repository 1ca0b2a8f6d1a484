-- commandbus 0010: a check that makes a group's statements all or nothing.
--
-- A worker that moves sagas in the transaction recording its outcomes sends that
-- transaction's statements (the outcomes, the sagas' transitions, their next
-- commands) to the server at once, as one implicit transaction. Each statement
-- ends by passing the number of rows it applied and the number expected to this
-- function: a row that did not apply (a stream moved meanwhile, a duplicate
-- command) raises SQLSTATE CB409, which undoes the whole transaction; the worker
-- then records the group the ordinary way, one statement after another.

CREATE FUNCTION commandbus.all_applied(applied bigint, expected bigint, what text)
RETURNS bigint
LANGUAGE plpgsql
AS $$
BEGIN
    IF applied IS DISTINCT FROM expected THEN
        RAISE EXCEPTION 'commandbus: % of % % applied; the group is undone',
            applied, expected, what
            USING ERRCODE = 'CB409';
    END IF;
    RETURN applied;
END
$$;

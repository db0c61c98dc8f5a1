ALTER TABLE line_items DROP COLUMN overdraft;
ALTER TABLE line_items DROP COLUMN max_borrow_secs;

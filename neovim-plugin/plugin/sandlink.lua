-- Loaded at start-up: only guards against double loading; nothing starts until require('sandlink').setup().
if vim.g.loaded_sandlink then
  return
end
vim.g.loaded_sandlink = true

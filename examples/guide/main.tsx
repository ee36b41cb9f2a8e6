// Mounts the guide's page (page.tsx, verbatim from the guide) — the only file that is ours.
import { createRoot } from "react-dom/client";
import WorkflowPage from "./page";

createRoot(document.getElementById("root")!).render(<WorkflowPage />);

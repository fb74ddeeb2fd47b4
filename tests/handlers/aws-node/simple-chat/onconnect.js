// $connect: remember the connection (the OnConnect function of AWS's simple WebSocket
// chat sample). The one change: the connection table is the Redis set TABLE_NAME on
// REDIS_URL, not a DynamoDB table.
import { createClient } from 'redis';

const { TABLE_NAME, REDIS_URL } = process.env;

const redis = createClient({ url: REDIS_URL });
redis.on('error', (err) => console.log(`Redis: ${err.message}`));
await redis.connect();

export const handler = async (event) => {
  try {
    await redis.sAdd(TABLE_NAME, event.requestContext.connectionId);
  } catch (err) {
    return { statusCode: 500, body: 'Failed to connect: ' + JSON.stringify(err) };
  }

  return { statusCode: 200, body: 'Connected.' };
};
